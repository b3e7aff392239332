//! Prefix and suffix templates: literal text with `{column}` or `{column:format}` fields.
//!
//! Only the structure lives here; turning a column's value into text (`{boxes:loc}` into
//! `<loc0123>...`) is the pipeline's job, plugged in through [`Template::render`].

use std::fmt;

use crate::error::{TemplateError, TemplateProblem};

/// A parsed template, e.g. `"detect {label}"` or `"{boxes:loc} {label}"`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    parts: Vec<Part>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Part {
    Literal(String),
    Field {
        column: String,
        format: Option<String>,
    },
}

impl Template {
    /// Parses `{column}` / `{column:format}` fields; `{{` and `}}` stand for literal braces.
    pub fn parse(text: &str) -> Result<Template, TemplateError> {
        let mut parts = Vec::new();
        let mut literal = String::new();
        let mut chars = text.char_indices().peekable();
        while let Some((i, c)) = chars.next() {
            match c {
                '{' if chars.next_if(|&(_, c)| c == '{').is_some() => literal.push('{'),
                '}' if chars.next_if(|&(_, c)| c == '}').is_some() => literal.push('}'),
                '}' => {
                    return Err(TemplateError {
                        position: i,
                        problem: TemplateProblem::StrayClose,
                    });
                }
                '{' => {
                    let close = text[i..].find('}').map(|j| i + j);
                    let close = close.ok_or(TemplateError {
                        position: i,
                        problem: TemplateProblem::Unclosed,
                    })?;
                    if !literal.is_empty() {
                        parts.push(Part::Literal(std::mem::take(&mut literal)));
                    }
                    parts.push(field(&text[i + 1..close], i)?);
                    while chars.next_if(|&(j, _)| j <= close).is_some() {}
                }
                c => literal.push(c),
            }
        }
        if !literal.is_empty() {
            parts.push(Part::Literal(literal));
        }
        Ok(Template { parts })
    }

    pub fn into_parts(self) -> Vec<Part> {
        self.parts
    }

    pub fn parts(&self) -> &[Part] {
        &self.parts
    }

    /// The columns the template reads, in order of first use.
    pub fn columns(&self) -> Vec<&str> {
        let mut columns = Vec::new();
        for part in &self.parts {
            if let Part::Field { column, .. } = part
                && !columns.contains(&column.as_str())
            {
                columns.push(column.as_str());
            }
        }
        columns
    }

    /// The literal text alone: what every rendering contains, whatever the row.
    pub fn literal_text(&self) -> String {
        self.parts
            .iter()
            .filter_map(|p| match p {
                Part::Literal(s) => Some(s.as_str()),
                Part::Field { .. } => None,
            })
            .collect()
    }

    /// Renders the template, asking `lookup(column, format)` for each field's text.
    pub fn render<E>(
        &self,
        mut lookup: impl FnMut(&str, Option<&str>) -> Result<String, E>,
    ) -> Result<String, E> {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Literal(s) => out.push_str(s),
                Part::Field { column, format } => out.push_str(&lookup(column, format.as_deref())?),
            }
        }
        Ok(out)
    }
}

/// The inside of `{...}` starting at byte `open` of the template.
fn field(inside: &str, open: usize) -> Result<Part, TemplateError> {
    let error = |problem| TemplateError {
        position: open,
        problem,
    };
    if inside.contains('{') {
        return Err(error(TemplateProblem::Unclosed));
    }
    let (column, format) = match inside.split_once(':') {
        Some((column, format)) => (column.trim(), Some(format.trim())),
        None => (inside.trim(), None),
    };
    if column.is_empty() {
        return Err(error(TemplateProblem::EmptyField));
    }
    if format == Some("") {
        return Err(error(TemplateProblem::EmptyFormat));
    }
    let name_ok = |s: &str| {
        s.chars()
            .all(|c| c.is_alphanumeric() || matches!(c, '_' | '-' | '.'))
    };
    for name in std::iter::once(column).chain(format) {
        if !name_ok(name) {
            return Err(error(TemplateProblem::BadName(name.to_string())));
        }
    }
    Ok(Part::Field {
        column: column.to_string(),
        format: format.map(str::to_string),
    })
}

/// Writes the template back in its source syntax (braces in literals doubled).
impl fmt::Display for Template {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for part in &self.parts {
            match part {
                Part::Literal(s) => f.write_str(&s.replace('{', "{{").replace('}', "}}"))?,
                Part::Field {
                    column,
                    format: None,
                } => write!(f, "{{{column}}}")?,
                Part::Field {
                    column,
                    format: Some(format),
                } => write!(f, "{{{column}:{format}}}")?,
            }
        }
        Ok(())
    }
}

impl std::str::FromStr for Template {
    type Err = TemplateError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Template::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lit(s: &str) -> Part {
        Part::Literal(s.into())
    }
    fn field(column: &str, format: Option<&str>) -> Part {
        Part::Field {
            column: column.into(),
            format: format.map(Into::into),
        }
    }

    #[test]
    fn parses_fields_formats_and_escapes() {
        let t = Template::parse("{boxes:loc} {label}").unwrap();
        assert_eq!(
            t.parts(),
            [field("boxes", Some("loc")), lit(" "), field("label", None)]
        );
        let t = Template::parse("answer en {question}").unwrap();
        assert_eq!(t.parts(), [lit("answer en "), field("question", None)]);
        let t = Template::parse("{{json}} {a}}}").unwrap();
        assert_eq!(t.parts(), [lit("{json} "), field("a", None), lit("}")]);
        assert_eq!(Template::parse("").unwrap().parts(), []);
    }

    #[test]
    fn columns_in_first_use_order() {
        let t = Template::parse("{b} {a:x} {b:y}").unwrap();
        assert_eq!(t.columns(), ["b", "a"]);
        assert_eq!(t.literal_text(), "  ");
    }

    #[test]
    fn errors_name_the_byte() {
        let err = |s| Template::parse(s).unwrap_err();
        assert_eq!(
            err("ab {q"),
            TemplateError {
                position: 3,
                problem: TemplateProblem::Unclosed
            }
        );
        assert_eq!(
            err("a } b"),
            TemplateError {
                position: 2,
                problem: TemplateProblem::StrayClose
            }
        );
        assert_eq!(err("{}").problem, TemplateProblem::EmptyField);
        assert_eq!(err("{a:}").problem, TemplateProblem::EmptyFormat);
        assert_eq!(err("{a b}").problem, TemplateProblem::BadName("a b".into()));
        assert_eq!(err("{a {b}").problem, TemplateProblem::Unclosed);
        assert_eq!(
            err("ab {q").to_string(),
            "at byte 3: '{' is never closed (write '{{' for a literal brace)"
        );
    }

    #[test]
    fn render_calls_lookup_per_field() {
        let t = Template::parse("caption {lang}: {text:upper}").unwrap();
        let out = t.render(|column, format| -> Result<String, String> {
            Ok(match (column, format) {
                ("lang", None) => "en".into(),
                ("text", Some("upper")) => "A CAT".into(),
                other => return Err(format!("unexpected {other:?}")),
            })
        });
        assert_eq!(out.unwrap(), "caption en: A CAT");
        let failed = t.render(|column, _| Err::<String, _>(column.to_string()));
        assert_eq!(failed.unwrap_err(), "lang");
    }

    #[test]
    fn display_round_trips() {
        for s in ["{boxes:loc} {label}", "{{x}} {y}", "plain", "}}{a}{{"] {
            let t = Template::parse(s).unwrap();
            assert_eq!(Template::parse(&t.to_string()).unwrap(), t);
        }
    }
}
