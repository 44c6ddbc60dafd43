//! Line numbers for the model's validation errors: the error names its subject (an object by
//! its position in the file's arrays) and field; this finds them in the file's parsed
//! document and turns the span into a line. Nothing here reads the error's message.

use toml::{
    de::{DeTable, DeValue},
    Spanned,
};

use super::validate::{Invalid, Subject};

/// The 1-based line in `text` of what `error` is about: its field inside its subject, else
/// the subject's first line.
pub fn locate(text: &str, error: &Invalid) -> Option<usize> {
    let root = DeTable::parse(text).ok()?;
    let root = root.get_ref();
    let object = match error.subject {
        Subject::Listener { index } => item(root, "listener", index)?,
        Subject::TargetGroup { index } => item(root, "target_group", index)?,
        Subject::Target { group, index } => {
            item(table(item(root, "target_group", group)?)?, "targets", index)?
        }
        Subject::Rule { listener, index } => {
            item(table(item(root, "listener", listener)?)?, "rule", index)?
        }
        Subject::DataPlane => root.iter().find(|(k, _)| k.get_ref() == "data_plane")?.1,
        Subject::Resolver => root.iter().find(|(k, _)| k.get_ref() == "resolver")?.1,
    };
    let start = error
        .field
        .and_then(|field| {
            table(object)?
                .iter()
                .find(|(key, _)| key.get_ref() == field)
                .map(|(key, _)| key.span().start)
        })
        .unwrap_or_else(|| first_key(object));
    Some(line_at(text, start))
}

/// The `index`th entry of the array `name` in `table` (`[[name]]` tables or an inline
/// array).
fn item<'a, 'i>(
    table: &'a DeTable<'i>,
    name: &str,
    index: usize,
) -> Option<&'a Spanned<DeValue<'i>>> {
    let (_, value) = table.iter().find(|(k, _)| k.get_ref() == name)?;
    match value.get_ref() {
        DeValue::Array(items) => items.get(index),
        _ => None,
    }
}

fn table<'a, 'i>(value: &'a Spanned<DeValue<'i>>) -> Option<&'a DeTable<'i>> {
    match value.get_ref() {
        DeValue::Table(table) => Some(table),
        _ => None,
    }
}

/// Where an object starts: its first key (the span of an array-of-tables entry starts at its
/// first key, not at the `[[...]]` header).
fn first_key(object: &Spanned<DeValue<'_>>) -> usize {
    table(object)
        .and_then(|t| t.iter().map(|(k, _)| k.span().start).min())
        .unwrap_or(object.span().start)
}

fn line_at(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = r#"[[listener]]
name = "web"
address = "192.0.2.10"
port = 80
protocol = "http"
default_target_group = "web"

[[listener.rule]]
priority = 1
host = ["a.example.com"]
action = { type = "forward", target_groups = [{ name = "web" }] }

[[listener.rule]]
priority = 2
host = ["b.example.com"]
action = { type = "fixed_response", status = 200 }

[[target_group]]
name = "web"
port = 3000
deregistration_delay = 9999
targets = [
  { address = "10.0.1.10" },
  { address = "10.0.1.11", weight = 0 },
]

[data_plane]
nat_port_range = [5000, 4000]
"#;

    fn at(subject: Subject, field: Option<&'static str>) -> Option<usize> {
        let error = Invalid {
            subject,
            field,
            message: "(not read)".into(),
        };
        locate(TEXT, &error)
    }

    #[test]
    fn subjects_and_fields_are_found_by_position_and_key() {
        assert_eq!(at(Subject::Listener { index: 0 }, Some("port")), Some(4));
        assert_eq!(at(Subject::Listener { index: 0 }, None), Some(2));
        assert_eq!(
            at(Subject::Listener { index: 0 }, Some("no_such_field")),
            Some(2),
            "a field that is not written (a default) points at the object"
        );
        assert_eq!(
            at(
                Subject::Rule {
                    listener: 0,
                    index: 1
                },
                None
            ),
            Some(14),
            "a rule's error points at that rule"
        );
        assert_eq!(
            at(
                Subject::Rule {
                    listener: 0,
                    index: 0
                },
                Some("host")
            ),
            Some(10)
        );
        assert_eq!(
            at(
                Subject::TargetGroup { index: 0 },
                Some("deregistration_delay")
            ),
            Some(21)
        );
        assert_eq!(
            at(Subject::Target { group: 0, index: 1 }, Some("weight")),
            Some(24)
        );
        assert_eq!(at(Subject::DataPlane, Some("nat_port_range")), Some(28));
        assert_eq!(at(Subject::Listener { index: 5 }, None), None);
    }
}
