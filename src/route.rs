//! Route patterns (`/lectures/{id}/`, `/courses/{*rest}`) and tag templates (`lecture:{id}`).
//!
//! Each `[[route]]` and `[[invalidate]]` rule owns one compiled pattern; the proxy tries them in file
//! order, which a single radix router cannot express. Patterns are compiled once at config load.

use std::fmt;

/// A compiled path pattern using matchit's `{param}` and trailing `{*rest}` syntax.
#[derive(Clone)]
pub struct PathPattern {
    source: String,
    router: matchit::Router<()>,
    params: Vec<String>,
}

// A pattern is compiled from its source alone, so equal sources are equal patterns (config
// reload compares routes by value).
impl PartialEq for PathPattern {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source
    }
}

impl Eq for PathPattern {}

impl fmt::Debug for PathPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

/// Path parameters captured by a match, in pattern order.
pub type Params = Vec<(String, String)>;

/// What is wrong with a path pattern or tag template (a config error, with its key and line
/// added by the loader).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct PatternError(pub String);

impl PathPattern {
    /// Compiles a pattern.
    ///
    /// # Errors
    /// A message saying what is wrong with the pattern.
    pub fn new(source: &str) -> Result<Self, PatternError> {
        if !source.starts_with('/') {
            return Err(PatternError("a path pattern must start with '/'".into()));
        }
        let mut router = matchit::Router::new();
        router.insert(source, ()).map_err(|e| PatternError(e.to_string()))?;
        // `{*rest}` also matches an empty remainder: `/courses/{*rest}` matches `/courses/`.
        if let Some(start) = source.rfind("{*") {
            if source.ends_with('}') {
                router
                    .insert(&source[..start], ())
                    .map_err(|e| PatternError(e.to_string()))?;
            }
        }
        let params = param_names(source);
        Ok(PathPattern {
            source: source.to_string(),
            router,
            params,
        })
    }

    /// The pattern as written in the config.
    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// Names of the parameters the pattern captures.
    pub fn param_names(&self) -> &[String] {
        &self.params
    }

    /// Whether `path` matches.
    pub fn matches(&self, path: &str) -> bool {
        self.router.at(path).is_ok()
    }

    /// Captured parameters, or `None` when `path` does not match.
    pub fn params(&self, path: &str) -> Option<Params> {
        let m = self.router.at(path).ok()?;
        Some(m.params.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect())
    }
}

fn param_names(source: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = source;
    while let Some(open) = rest.find('{') {
        if rest[open + 1..].starts_with('{') {
            rest = &rest[open + 2..];
            continue;
        }
        let Some(close) = rest[open..].find('}') else {
            break;
        };
        let name = rest[open + 1..open + close].trim_start_matches('*');
        names.push(name.to_string());
        rest = &rest[open + close + 1..];
    }
    names
}

/// A tag with `{param}` placeholders filled from path parameters, e.g. `lecture:{id}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TagTemplate {
    parts: Vec<Part>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Lit(String),
    Param(String),
}

impl TagTemplate {
    /// Parses a template; every placeholder must name one of `params`.
    ///
    /// # Errors
    /// A message naming the unknown or malformed placeholder.
    pub fn new(source: &str, params: &[String]) -> Result<Self, PatternError> {
        if source.is_empty() {
            return Err(PatternError("a tag must not be empty".into()));
        }
        if source.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(PatternError("a tag must not contain whitespace".into()));
        }
        let mut parts = Vec::new();
        let mut rest = source;
        while let Some(open) = rest.find('{') {
            if open > 0 {
                parts.push(Part::Lit(rest[..open].to_string()));
            }
            let close = rest[open..]
                .find('}')
                .ok_or_else(|| PatternError(format!("unclosed '{{' in tag {source:?}")))?;
            let name = &rest[open + 1..open + close];
            if !params.iter().any(|p| p == name) {
                return Err(PatternError(format!(
                    "tag {source:?} uses {{{name}}}, but the path has no such parameter (it has: {})",
                    params.join(", ")
                )));
            }
            parts.push(Part::Param(name.to_string()));
            rest = &rest[open + close + 1..];
        }
        if rest.contains('}') {
            return Err(PatternError(format!("unmatched '}}' in tag {source:?}")));
        }
        if !rest.is_empty() {
            parts.push(Part::Lit(rest.to_string()));
        }
        Ok(TagTemplate { parts })
    }

    /// Whether the template has no placeholders.
    pub fn is_static(&self) -> bool {
        self.parts.iter().all(|p| matches!(p, Part::Lit(_)))
    }

    /// Fills the placeholders from captured parameters.
    pub fn render(&self, params: &Params) -> String {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Lit(s) => out.push_str(s),
                Part::Param(name) => {
                    if let Some((_, v)) = params.iter().find(|(k, _)| k == name) {
                        out.push_str(v);
                    }
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn catch_all_matches_empty_remainder() {
        let p = PathPattern::new("/courses/{*rest}").unwrap();
        assert!(p.matches("/courses/"));
        assert!(p.matches("/courses/1/edit"));
        assert!(!p.matches("/course"));
        let any = PathPattern::new("/{*any}").unwrap();
        assert!(any.matches("/"));
        assert!(any.matches("/x/y"));
    }

    #[test]
    fn tags_render_path_params() {
        let p = PathPattern::new("/lectures/{id}/").unwrap();
        let params = p.params("/lectures/42/").unwrap();
        let t = TagTemplate::new("lecture:{id}", p.param_names()).unwrap();
        assert_eq!(t.render(&params), "lecture:42");
        assert!(TagTemplate::new("lecture:{nope}", p.param_names()).is_err());
    }

    #[test]
    fn bad_patterns_are_errors() {
        assert!(PathPattern::new("courses/").is_err());
        assert!(PathPattern::new("/a/{*rest}/b").is_err());
        assert!(PathPattern::new("/a/{id").is_err());
    }
}
