//! Line numbers for the model's semantic errors. Validation works on the parsed model and
//! names the object and the field (`listener 'web': maglev_table_size ...`); this finds that
//! object, field or target in the file's text, so the error can say where to look.

use toml::de::{DeTable, DeValue};

/// The 1-based line in `text` of what `message` is about, when it can be found: the field
/// or target the message names inside the listener, target group or `[data_plane]` it
/// names, else that object's `name`.
pub fn locate(text: &str, message: &str) -> Option<usize> {
    let root = DeTable::parse(text).ok()?;
    let root = root.get_ref();
    let (section, name) = subject(message)?;
    let object = match name {
        None => root.iter().find(|(k, _)| k.get_ref() == section)?.1,
        Some(name) => {
            let (_, list) = root.iter().find(|(k, _)| k.get_ref() == section)?;
            let DeValue::Array(items) = list.get_ref() else {
                return None;
            };
            items.iter().find(|item| named(item.get_ref(), name))?
        }
    };
    let DeValue::Table(table) = object.get_ref() else {
        return None;
    };
    let rest = match name {
        Some(name) => message
            .split_once(&format!("'{name}'"))
            .map_or("", |(_, r)| r),
        None => message,
    };
    // A target of a group: the line of its entry in `targets`.
    if let Some(target) = rest.strip_prefix(": target ") {
        let address = target.split([' ', ':']).next().unwrap_or_default();
        let address = address.trim_start_matches('[').trim_end_matches(']');
        if let Some(entry) = targets(table).find(|t| address_of(t.get_ref()) == Some(address)) {
            return Some(line_at(text, entry.span().start));
        }
    }
    // The field the message names first (`maglev_table_size`, `health_check`, ...).
    let field = table
        .iter()
        .filter_map(|(key, value)| {
            let at = find_word(rest, key.get_ref())?;
            Some((at, key.span().start.min(value.span().start)))
        })
        .min_by_key(|(at, _)| *at);
    let start = match field {
        Some((_, start)) => start,
        None => table
            .iter()
            .find(|(k, _)| k.get_ref() == "name")
            .map_or(object.span().start, |(k, _)| k.span().start),
    };
    Some(line_at(text, start))
}

/// Which array and name (or which table) a message is about.
fn subject(message: &str) -> Option<(&'static str, Option<&str>)> {
    for (prefix, section) in [
        ("listeners '", "listener"),
        ("listener '", "listener"),
        ("target group '", "target_group"),
    ] {
        if let Some(rest) = message.strip_prefix(prefix) {
            let name = rest.split_once('\'')?.0;
            return Some((section, Some(name)));
        }
    }
    message
        .starts_with("data_plane")
        .then_some(("data_plane", None))
}

fn named(value: &DeValue<'_>, name: &str) -> bool {
    let DeValue::Table(table) = value else {
        return false;
    };
    table.iter().any(|(k, v)| {
        k.get_ref() == "name" && matches!(v.get_ref(), DeValue::String(s) if s == name)
    })
}

fn targets<'a, 'i>(
    table: &'a DeTable<'i>,
) -> impl Iterator<Item = &'a toml::Spanned<DeValue<'i>>> + 'a {
    table
        .iter()
        .filter(|(k, _)| k.get_ref() == "targets")
        .filter_map(|(_, v)| match v.get_ref() {
            DeValue::Array(items) => Some(items.iter()),
            _ => None,
        })
        .flatten()
}

fn address_of<'a>(value: &'a DeValue<'_>) -> Option<&'a str> {
    let DeValue::Table(table) = value else {
        return None;
    };
    table.iter().find_map(|(k, v)| match v.get_ref() {
        DeValue::String(s) if k.get_ref() == "address" => Some(s.as_ref()),
        _ => None,
    })
}

/// Where `word` first occurs in `text` as a whole word (not inside a longer name).
fn find_word(text: &str, word: &str) -> Option<usize> {
    let is_name = |c: char| c.is_ascii_alphanumeric() || c == '_';
    text.match_indices(word).map(|(i, _)| i).find(|&i| {
        let before = text[..i].chars().next_back();
        let after = text[i + word.len()..].chars().next();
        !before.is_some_and(is_name) && !after.is_some_and(is_name)
    })
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
protocol = "tcp"
default_target_group = "web"
maglev_table_size = 1000

[[listener]]
name = "api"
address = "192.0.2.10"
port = 80
protocol = "tcp"
default_target_group = "nope"

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

    #[test]
    fn fields_targets_and_objects_are_found() {
        let at = |m: &str| locate(TEXT, m);
        assert_eq!(
            at("listener 'web': maglev_table_size: 1000 is not prime"),
            Some(7)
        );
        assert_eq!(
            at("listener 'api': default_target_group 'nope' does not exist"),
            Some(14)
        );
        assert_eq!(
            at("listeners 'web' and 'api' both listen on 192.0.2.10:80 tcp"),
            Some(2)
        );
        assert_eq!(
            at("target group 'web': target 10.0.1.11:3000 has weight 0; weights are 1 to 999"),
            Some(22)
        );
        assert_eq!(
            at("target group 'web': deregistration_delay 9999 is above the maximum"),
            Some(19)
        );
        assert_eq!(
            at("data_plane.nat_port_range [5000, 4000] is not a range"),
            Some(26)
        );
        assert_eq!(at("something else entirely"), None);
    }

    #[test]
    fn a_word_inside_a_longer_name_is_not_a_field() {
        assert_eq!(find_word("default_target_group 'x'", "target_group"), None);
        assert_eq!(find_word("the port 80", "port"), Some(4));
    }
}
