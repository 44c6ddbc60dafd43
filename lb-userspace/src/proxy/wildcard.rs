//! ALB's pattern matching: `*` matches any run of characters (also none), `?` exactly one,
//! everything else itself. Hosts, header values and query strings compare case-insensitively,
//! paths and methods case-sensitively.

/// A compiled pattern.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pattern {
    /// Lower-cased when `case_insensitive`.
    pattern: Vec<u8>,
    case_insensitive: bool,
}

impl Pattern {
    pub fn new(pattern: &str, case_insensitive: bool) -> Pattern {
        let pattern = if case_insensitive {
            pattern.to_ascii_lowercase().into_bytes()
        } else {
            pattern.as_bytes().to_vec()
        };
        Pattern {
            pattern,
            case_insensitive,
        }
    }

    pub fn case_sensitive(pattern: &str) -> Pattern {
        Pattern::new(pattern, false)
    }

    pub fn case_insensitive(pattern: &str) -> Pattern {
        Pattern::new(pattern, true)
    }

    pub fn matches(&self, text: &str) -> bool {
        matches(&self.pattern, text.as_bytes(), self.case_insensitive)
    }
}

/// Glob matching with one backtracking point (the latest `*`): linear in practice and at
/// worst `pattern.len() * text.len()`, so a hostile request cannot make it explode.
fn matches(pattern: &[u8], text: &[u8], fold: bool) -> bool {
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    let eq = |a: u8, b: u8| a == if fold { b.to_ascii_lowercase() } else { b };
    while t < text.len() {
        match pattern.get(p) {
            Some(b'*') => {
                star = Some((p, t));
                p += 1;
            }
            Some(b'?') => {
                p += 1;
                t += 1;
            }
            Some(&c) if eq(c, text[t]) => {
                p += 1;
                t += 1;
            }
            _ => match star {
                // Let the latest `*` swallow one more character and retry.
                Some((sp, st)) => {
                    p = sp + 1;
                    t = st + 1;
                    star = Some((sp, st + 1));
                }
                None => return false,
            },
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(p: &str, t: &str) -> bool {
        Pattern::case_insensitive(p).matches(t)
    }

    fn path(p: &str, t: &str) -> bool {
        Pattern::case_sensitive(p).matches(t)
    }

    #[test]
    fn literal_patterns_match_only_themselves() {
        assert!(host("api.example.com", "api.example.com"));
        assert!(!host("api.example.com", "api.example.co"));
        assert!(!host("api.example.com", "api.example.comm"));
        assert!(path("", ""));
        assert!(!path("", "x"));
    }

    #[test]
    fn star_matches_any_run_including_none() {
        assert!(host("*.example.com", "a.example.com"));
        assert!(host("*.example.com", "a.b.example.com"));
        assert!(
            !host("*.example.com", "example.com"),
            "ALB: *.example.com does not match example.com"
        );
        assert!(host("*.example.com", ".example.com"));
        assert!(path("/v1/*", "/v1/"));
        assert!(path("/v1/*", "/v1/users/7"));
        assert!(!path("/v1/*", "/v1"));
        assert!(path("*", ""));
        assert!(path("/a*b*c", "/aXbYc"));
        assert!(path("/a*b*c", "/abbbc"));
        assert!(!path("/a*b*c", "/acb"));
        assert!(path("*/img/*.png", "/static/img/x.png"));
    }

    #[test]
    fn question_mark_matches_exactly_one() {
        assert!(path("/v?/x", "/v1/x"));
        assert!(!path("/v?/x", "/v/x"));
        assert!(!path("/v?/x", "/v12/x"));
        assert!(path("/v??", "/v12"));
        assert!(host("?.example.com", "a.example.com"));
    }

    #[test]
    fn case_folding_is_per_pattern() {
        assert!(host("API.Example.com", "api.EXAMPLE.com"));
        assert!(!path("/V1/*", "/v1/x"));
        assert!(path("/V1/*", "/V1/x"));
    }

    #[test]
    fn hostile_inputs_stay_fast() {
        let pattern = "*a*a*a*a*a*a*a*a*b";
        let text = "a".repeat(10_000);
        let started = std::time::Instant::now();
        assert!(!path(pattern, &text));
        assert!(started.elapsed() < std::time::Duration::from_secs(2));
    }
}
