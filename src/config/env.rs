//! `${VAR}` and `${VAR:-default}` in config values, filled in from the environment each
//! time the file is loaded (at start, by `tollgate check`, and on every reload); `$$` is a
//! literal `$`. As in a shell, the default applies when the variable is unset or empty.
//!
//! Expansion works on the YAML document's scalar values, never on keys or raw text, so a
//! value cannot break the document's structure: a plain value that expands to something
//! YAML would read differently (a space, a quote, a `#`) is written back quoted. A plain
//! value that expands to a number or `true` is read as one, so `threads: ${THREADS:-2}`
//! works. Lines never move, so every later error still points at the right line. In flow
//! style (`[...]`, `{...}`) YAML reads `${` as the start of a mapping, so such a value is
//! written quoted: `backends: ["${BACKEND}"]`.

use super::errors::Problem;
use super::locate::{self, ScalarSite, ScalarStyle};
use std::borrow::Cow;

/// `text` with every `${...}` in its values expanded by `lookup`, or the values that could
/// not be (a missing variable without a default, bad syntax), by path.
pub fn expand<'t>(
    text: &'t str,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<Cow<'t, str>, Vec<Problem>> {
    if !text.contains('$') {
        return Ok(Cow::Borrowed(text));
    }
    let mut problems = Vec::new();
    let mut edits = Vec::new();
    for site in locate::values_containing(text, '$') {
        match expand_value(&site.value, lookup).and_then(|value| edit(text, &site, &value)) {
            Ok(Some(e)) => edits.push(e),
            Ok(None) => {}
            Err(why) => problems.push(Problem::at(site.path, why)),
        }
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    let mut out = text.to_string();
    // From the end, so earlier byte ranges stay where they were.
    for (range, replacement) in edits.into_iter().rev() {
        out.replace_range(range, &replacement);
    }
    Ok(Cow::Owned(out))
}

/// One value with its `${...}` filled in.
fn expand_value(value: &str, lookup: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::with_capacity(value.len());
    let mut rest = value;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(tail) = after.strip_prefix('{') {
            let close = tail.find('}').ok_or_else(|| {
                format!("`${{{tail}` has no closing `}}` (write `$$` for a literal `$`)")
            })?;
            let inner = &tail[..close];
            let (name, default) = match inner.split_once(":-") {
                Some((name, default)) => (name, Some(default)),
                None => (inner, None),
            };
            if !is_variable_name(name) {
                return Err(format!(
                    "`${{{inner}}}`: a variable name is letters, digits and `_`, not starting with a digit"
                ));
            }
            match (lookup(name).filter(|v| !v.is_empty() || default.is_none()), default) {
                (Some(v), _) => out.push_str(&v),
                (None, Some(default)) => out.push_str(default),
                (None, None) => {
                    return Err(format!(
                        "the environment variable {name} is not set (write `${{{name}:-default}}` to give it a default)"
                    ))
                }
            }
            rest = &tail[close + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    Ok(out)
}

fn is_variable_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

type Edit = (std::ops::Range<usize>, String);

/// The source bytes of `site` and what replaces them; `None` when nothing changes.
fn edit(text: &str, site: &ScalarSite, value: &str) -> Result<Option<Edit>, String> {
    if value == site.value {
        return Ok(None);
    }
    let start = text
        .char_indices()
        .nth(site.start)
        .map_or(text.len(), |(byte, _)| byte);
    let source = &text[start..];
    let len = match site.style {
        ScalarStyle::Plain if source.starts_with(site.value.as_str()) => Some(site.value.len()),
        ScalarStyle::Plain => {
            return Err("a value with `${...}` must be written on one line".into());
        }
        ScalarStyle::DoubleQuoted => quoted_len(source, '"', Some('\\')),
        ScalarStyle::SingleQuoted => quoted_len(source, '\'', None),
        ScalarStyle::Literal | ScalarStyle::Folded => {
            return Err(
                "`${...}` is not expanded in block values (`|` or `>`): write the value on one line"
                    .into(),
            );
        }
    }
    .ok_or("a value with `${...}` must be written on one line")?;
    let replacement = if site.style == ScalarStyle::Plain && reads_the_same_plain(value) {
        value.to_string()
    } else {
        double_quoted(value)
    };
    Ok(Some((start..start + len, replacement)))
}

/// The length in bytes of a quoted scalar at the start of `source`, quotes included, if it
/// ends on its first line.
fn quoted_len(source: &str, quote: char, escape: Option<char>) -> Option<usize> {
    let mut chars = source.char_indices().skip(1).peekable();
    while let Some((at, c)) = chars.next() {
        match c {
            '\n' => return None,
            c if Some(c) == escape => {
                chars.next();
            }
            c if c == quote => {
                // A single-quoted scalar writes a quote as two.
                if escape.is_none() && chars.peek().is_some_and(|(_, next)| *next == quote) {
                    chars.next();
                    continue;
                }
                return Some(at + c.len_utf8());
            }
            _ => {}
        }
    }
    None
}

/// Whether `value`, written plain, is read back as exactly this text (or as the number or
/// boolean it spells) in any context, block or flow.
fn reads_the_same_plain(value: &str) -> bool {
    let mut chars = value.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '/' | '_'))
        && chars.all(|c| {
            c.is_ascii_alphanumeric()
                || matches!(c, '.' | '/' | '_' | '-' | '+' | '@' | '%' | ':' | '=' | '$')
        })
        && !value.ends_with(':')
}

fn double_quoted(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 2);
    out.push('"');
    for c in value.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "REDIS_URL" => Some("redis://:s3cret@cache:6379/0".into()),
            "THREADS" => Some("4".into()),
            "SPACED" => Some("a b # c".into()),
            "QUOTE" => Some("say \"hi\"".into()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    fn run(text: &str) -> Result<String, Vec<Problem>> {
        expand(text, &env).map(Cow::into_owned)
    }

    #[test]
    fn plain_values_expand_in_place_and_keep_their_type() {
        let out = run("redis:\n  url: ${REDIS_URL}\nthreads: ${THREADS}\n").unwrap();
        assert_eq!(
            out,
            "redis:\n  url: redis://:s3cret@cache:6379/0\nthreads: 4\n"
        );
        let v: serde_yaml::Value = serde_yaml::from_str(&out).unwrap();
        assert_eq!(v["threads"], serde_yaml::Value::from(4));
    }

    #[test]
    fn defaults_escapes_and_literal_dollars() {
        let out = run("a: ${MISSING:-50ms}\nb: ${EMPTY:-x}\nc: pa$$word\nd: $HOME\ne: ${EMPTY}\n")
            .unwrap();
        assert_eq!(out, "a: 50ms\nb: x\nc: pa$word\nd: $HOME\ne: \"\"\n");
    }

    #[test]
    fn values_that_would_read_differently_are_quoted() {
        let out = run("a: ${SPACED}\nb: \"${QUOTE}!\"\nc: [x, '${THREADS}']\n").unwrap();
        assert_eq!(
            out,
            "a: \"a b # c\"\nb: \"say \\\"hi\\\"!\"\nc: [x, \"4\"]\n"
        );
        let v: serde_yaml::Value = serde_yaml::from_str(&out).unwrap();
        assert_eq!(v["a"], serde_yaml::Value::from("a b # c"));
        assert_eq!(v["b"], serde_yaml::Value::from("say \"hi\"!"));
        assert_eq!(
            v["c"][1],
            serde_yaml::Value::from("4"),
            "quoted stays a string"
        );
    }

    #[test]
    fn keys_comments_and_other_text_are_left_alone() {
        let text = "# ${NOT_A_VALUE}\n${KEY}: 1\nx: y # ${ALSO_NOT}\n";
        assert_eq!(run(text).unwrap(), text);
    }

    #[test]
    fn lines_and_non_ascii_text_keep_their_place() {
        let out = run("# café ☕\nname: \"é ${THREADS} é\"\nnext: ${THREADS}\n").unwrap();
        assert_eq!(out, "# café ☕\nname: \"é 4 é\"\nnext: 4\n");
    }

    #[test]
    fn a_missing_variable_names_itself_and_its_value() {
        // In flow style (`[...]`) YAML reads `{` as a mapping: such values are quoted.
        let problems = run("upstreams:\n  a:\n    backends: [\"${BACKEND}\"]\n").unwrap_err();
        assert_eq!(problems.len(), 1);
        assert_eq!(problems[0].path, "upstreams.a.backends[0]");
        assert!(
            problems[0].message.contains("BACKEND is not set"),
            "{}",
            problems[0].message
        );
    }

    #[test]
    fn bad_syntax_is_refused() {
        for (text, needle) in [
            ("a: ${UNCLOSED\n", "no closing"),
            ("a: ${9LIVES}\n", "variable name"),
            ("a: ${}\n", "variable name"),
            ("a: |\n  ${THREADS}\n", "block values"),
        ] {
            let problems = run(text).unwrap_err();
            assert!(problems[0].message.contains(needle), "{text}: {problems:?}");
        }
    }
}
