//! Redirect actions: the `Location` built from the rule's templates (`#{protocol}`,
//! `#{host}`, `#{port}`, `#{path}`, `#{query}`) and the request's own values.

use crate::model::Redirect;

/// The request's parts a redirect may reuse.
#[derive(Clone, Copy, Debug)]
pub struct Original<'a> {
    /// `http` or `https`: the listener's.
    pub protocol: &'a str,
    /// Host without port (the listener's address when the request named none).
    pub host: &'a str,
    pub port: u16,
    /// With its leading `/`.
    pub path: &'a str,
    /// Without `?`; empty for none.
    pub query: &'a str,
}

/// The absolute URL to redirect to.
pub fn location(redirect: &Redirect, original: &Original<'_>) -> String {
    let port = original.port.to_string();
    // ALB's #{path} is the path without its leading slash, so "/#{path}" is the original.
    let path = original.path.strip_prefix('/').unwrap_or(original.path);
    let expand = |template: &str| -> String {
        // One pass: substituted values are never expanded again.
        let mut out = String::with_capacity(template.len() + 32);
        let mut rest = template;
        while let Some(start) = rest.find("#{") {
            out.push_str(&rest[..start]);
            let after = &rest[start..];
            let (value, len) = match after {
                a if a.starts_with("#{protocol}") => (original.protocol, 11),
                a if a.starts_with("#{host}") => (original.host, 7),
                a if a.starts_with("#{port}") => (port.as_str(), 7),
                a if a.starts_with("#{path}") => (path, 7),
                a if a.starts_with("#{query}") => (original.query, 8),
                _ => ("#{", 2),
            };
            out.push_str(value);
            rest = &after[len..];
        }
        out.push_str(rest);
        out
    };
    let protocol =
        expand(redirect.protocol.as_deref().unwrap_or("#{protocol}")).to_ascii_lowercase();
    let host = expand(redirect.host.as_deref().unwrap_or("#{host}"));
    let port = expand(redirect.port.as_deref().unwrap_or("#{port}"));
    let path = expand(redirect.path.as_deref().unwrap_or("/#{path}"));
    let query = expand(redirect.query.as_deref().unwrap_or("#{query}"));
    let default_port = match protocol.as_str() {
        "https" => "443",
        _ => "80",
    };
    let mut url = format!("{protocol}://{host}");
    if port != default_port {
        url.push(':');
        url.push_str(&port);
    }
    url.push_str(&path);
    if !query.is_empty() {
        url.push('?');
        url.push_str(&query);
    }
    url
}

#[cfg(test)]
mod tests {
    use super::*;

    fn redirect(text: &str) -> Redirect {
        toml::from_str(text).unwrap()
    }

    const ORIGINAL: Original<'static> = Original {
        protocol: "http",
        host: "www.example.com",
        port: 80,
        path: "/a/b",
        query: "x=1",
    };

    #[test]
    fn http_to_https_keeps_everything_else() {
        let r = redirect("protocol = \"HTTPS\"\nport = \"443\"");
        assert_eq!(location(&r, &ORIGINAL), "https://www.example.com/a/b?x=1");
    }

    #[test]
    fn templates_combine_literals_and_variables() {
        let r = redirect(
            "host = \"new.#{host}\"\npath = \"/v2/#{path}\"\nquery = \"#{query}&from=#{port}\"",
        );
        assert_eq!(
            location(&r, &ORIGINAL),
            "http://new.www.example.com/v2/a/b?x=1&from=80"
        );
        let no_query = Original {
            query: "",
            ..ORIGINAL
        };
        let r = redirect("path = \"/x\"");
        assert_eq!(location(&r, &no_query), "http://www.example.com/x");
        let r = redirect("port = 8443\nprotocol = \"https\"");
        assert_eq!(location(&r, &no_query), "https://www.example.com:8443/a/b");
    }

    #[test]
    fn substituted_values_are_not_expanded_again() {
        let sneaky = Original {
            path: "/#{host}",
            ..ORIGINAL
        };
        let r = redirect("host = \"other\"");
        assert_eq!(location(&r, &sneaky), "http://other/#{host}?x=1");
    }
}
