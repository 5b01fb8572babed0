//! Facts: what a machine *is* (its OS, kernel, memory, addresses, and
//! whatever its operators drop in its facts directory), as its agent
//! reports them; and `-F/--fact EXPR`, which targets commands by them.
//!
//! Facts are flat: nested objects are flattened with dots (`{"app":
//! {"tier": 2}}` is `app.tier = 2`); a value is a string, a number, a
//! boolean or a list of those. Keys are `[A-Za-z0-9_.-]+`.
//!
//! An expression is `key=value` (the value may be a shell glob),
//! `key!=value`, `key>N`, `key>=N`, `key<N`, `key<=N` (numeric: a value
//! that is not a number does not match), `key~REGEX`, or `key` alone (the
//! key is present). A list-valued fact matches when any element does.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::message::Message;

/// An agent's facts, by key.
pub type Facts = BTreeMap<String, Value>;

/// At most this much of facts (as JSON) per agent: a bigger set is refused.
pub const MAX_FACTS_BYTES: usize = 64 * 1024;

/// Where a request carries its `-F` expressions.
pub const FACTS_FIELD: &str = "facts";

/// Whether `key` may name a fact.
pub fn valid_key(key: &str) -> bool {
    !key.is_empty() && key.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// An object's entries with nested objects flattened into dotted keys,
/// added to `out` under `prefix`. A list keeps its scalars (a nested
/// object or list in it is kept as its JSON text).
pub fn flatten_into(prefix: &str, value: &Value, out: &mut Facts) {
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                let key = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
                flatten_into(&key, v, out);
            }
        }
        Value::Array(items) => {
            let items = items
                .iter()
                .map(|i| match i {
                    Value::Object(_) | Value::Array(_) => Value::String(i.to_string()),
                    scalar => scalar.clone(),
                })
                .collect();
            out.insert(prefix.to_owned(), Value::Array(items));
        }
        Value::Null => {}
        scalar => {
            out.insert(prefix.to_owned(), scalar.clone());
        }
    }
}

/// The facts' keys that are not valid, removed from `facts`.
pub fn drop_invalid_keys(facts: &mut Facts) -> Vec<String> {
    let bad: Vec<String> = facts.keys().filter(|k| !valid_key(k)).cloned().collect();
    for k in &bad {
        facts.remove(k);
    }
    bad
}

/// A digest of the facts: the agent sends them again only when it changes.
pub fn hash(facts: &Facts) -> String {
    let text = serde_json::to_string(facts).unwrap_or_default();
    Sha256::digest(text.as_bytes()).iter().take(16).map(|b| format!("{b:02x}")).collect()
}

/// The size of `facts` as sent (JSON).
pub fn size(facts: &Facts) -> usize {
    serde_json::to_string(facts).map_or(0, |t| t.len())
}

/// A comparison of an expression.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Eq,
    Ne,
    Gt,
    Ge,
    Lt,
    Le,
    Matches,
    Present,
}

impl Op {
    fn text(self) -> &'static str {
        match self {
            Op::Eq => "=",
            Op::Ne => "!=",
            Op::Gt => ">",
            Op::Ge => ">=",
            Op::Lt => "<",
            Op::Le => "<=",
            Op::Matches => "~",
            Op::Present => "",
        }
    }
}

/// What a fact's value is compared with.
#[derive(Debug, Clone)]
enum Against {
    Text(String),
    Glob(glob::Pattern),
    Number(f64),
    Regex(regex::Regex),
    Nothing,
}

/// One `-F` expression, parsed.
#[derive(Debug, Clone)]
pub struct FactExpr {
    pub key: String,
    pub op: Op,
    against: Against,
    text: String,
}

/// Why an expression does not parse: the expression, the character (from
/// 0) where it went wrong, and what is wrong there.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}\n  {text}\n  {caret}^", caret = " ".repeat(*.at))]
pub struct ExprError {
    pub text: String,
    pub at: usize,
    pub reason: String,
}

impl FromStr for FactExpr {
    type Err = ExprError;

    fn from_str(text: &str) -> Result<FactExpr, ExprError> {
        let fail = |at: usize, reason: String| ExprError { text: text.to_owned(), at, reason };
        let key_len = text.bytes().take_while(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-')).count();
        if key_len == 0 {
            return Err(fail(0, "a fact key comes first: letters, digits, `_`, `.` and `-`".into()));
        }
        let key = &text[..key_len];
        let rest = &text[key_len..];
        if rest.is_empty() {
            return Ok(FactExpr { key: key.to_owned(), op: Op::Present, against: Against::Nothing, text: text.into() });
        }
        let (op, value) = [
            ("!=", Op::Ne),
            (">=", Op::Ge),
            ("<=", Op::Le),
            ("=", Op::Eq),
            (">", Op::Gt),
            ("<", Op::Lt),
            ("~", Op::Matches),
        ]
        .into_iter()
        .find_map(|(sign, op)| rest.strip_prefix(sign).map(|v| (op, v)))
        .ok_or_else(|| {
            let word: String = rest.chars().take_while(|c| !c.is_alphanumeric()).take(3).collect();
            let word = if word.is_empty() { rest.chars().next().unwrap_or(' ').to_string() } else { word };
            fail(key_len, format!("unknown comparison operator `{word}` (=, !=, >, >=, <, <=, ~, or the key alone)"))
        })?;
        let at = text.len() - value.len();
        if let Some(sign) = value.chars().next().filter(|c| matches!(c, '=' | '<' | '>' | '!' | '~')) {
            let reason = format!("unknown comparison operator `{}{sign}` (=, !=, >, >=, <, <=, ~)", op.text());
            return Err(fail(at - op.text().len(), reason));
        }
        let against = match op {
            Op::Gt | Op::Ge | Op::Lt | Op::Le => match value.trim().parse::<f64>() {
                Ok(n) if n.is_finite() => Against::Number(n),
                _ => return Err(fail(at, format!("`{}` compares numbers: `{value}` is not one", op.text()))),
            },
            Op::Matches => match regex::Regex::new(value) {
                Ok(re) => Against::Regex(re),
                Err(e) => return Err(fail(at, format!("not a regular expression: {e}"))),
            },
            _ if value.contains(['*', '?', '[']) => match glob::Pattern::new(value) {
                Ok(g) => Against::Glob(g),
                Err(e) => return Err(fail(at + e.pos, format!("not a glob: {}", e.msg))),
            },
            _ => Against::Text(value.to_owned()),
        };
        Ok(FactExpr { key: key.to_owned(), op, against, text: text.into() })
    }
}

impl fmt::Display for FactExpr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// A scalar as text: strings as they are (not copied), numbers and
/// booleans as JSON.
fn as_text(v: &Value) -> std::borrow::Cow<'_, str> {
    match v {
        Value::String(s) => std::borrow::Cow::Borrowed(s),
        other => std::borrow::Cow::Owned(other.to_string()),
    }
}

fn as_number(v: &Value) -> Option<f64> {
    match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

impl FactExpr {
    /// Whether `facts` satisfy the expression.
    pub fn matches(&self, facts: &Facts) -> bool {
        let Some(value) = facts.get(&self.key) else { return false };
        if self.op == Op::Present {
            return true;
        }
        let one = |v: &Value| self.scalar_matches(v);
        match value {
            // `!=`: no element is the value.
            Value::Array(items) if self.op == Op::Ne => items.iter().all(one),
            Value::Array(items) => items.iter().any(one),
            scalar => one(scalar),
        }
    }

    /// Whether one value (a scalar, or one element of a list) satisfies
    /// the comparison (for `!=`: differs from the value). `key` alone is
    /// not a comparison: any value does.
    pub fn scalar_matches(&self, v: &Value) -> bool {
        match (&self.against, self.op) {
            (Against::Nothing, _) => true,
            (Against::Text(t), Op::Eq) => as_text(v) == t.as_str(),
            (Against::Text(t), Op::Ne) => as_text(v) != t.as_str(),
            (Against::Glob(g), Op::Eq) => g.matches(&as_text(v)),
            (Against::Glob(g), Op::Ne) => !g.matches(&as_text(v)),
            (Against::Regex(re), _) => re.is_match(&as_text(v)),
            (Against::Number(n), op) => as_number(v).is_some_and(|x| match op {
                Op::Gt => x > *n,
                Op::Ge => x >= *n,
                Op::Lt => x < *n,
                Op::Le => x <= *n,
                _ => false,
            }),
            _ => false,
        }
    }
}

/// Every `-F` of a request: all must hold.
#[derive(Debug, Clone, Default)]
pub struct FactFilter(pub Vec<FactExpr>);

/// Why a request's `custom.facts` cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FilterError {
    #[error("custom.facts must be a list of expressions")]
    NotStrings,
    #[error("fact expression: {0}")]
    Expr(#[from] ExprError),
}

impl FactFilter {
    pub fn parse(exprs: &[String]) -> Result<Option<FactFilter>, ExprError> {
        if exprs.is_empty() {
            return Ok(None);
        }
        exprs.iter().map(|e| e.parse()).collect::<Result<Vec<_>, _>>().map(|v| Some(FactFilter(v)))
    }

    /// The expressions a request carries, if any.
    pub fn of(request: &Message) -> Result<Option<FactFilter>, FilterError> {
        match request.metadata.custom.get(FACTS_FIELD) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Array(items)) => {
                let exprs: Option<Vec<String>> = items.iter().map(|v| v.as_str().map(str::to_owned)).collect();
                Ok(Self::parse(&exprs.ok_or(FilterError::NotStrings)?)?)
            }
            Some(_) => Err(FilterError::NotStrings),
        }
    }

    /// Puts `exprs` in a request.
    pub fn attach(request: &mut Message, exprs: &[String]) {
        if !exprs.is_empty() {
            request.metadata.custom.insert(FACTS_FIELD.into(), exprs.to_vec().into());
        }
    }

    pub fn matches(&self, facts: &Facts) -> bool {
        self.0.iter().all(|e| e.matches(facts))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn facts() -> Facts {
        let mut f = Facts::new();
        flatten_into(
            "",
            &json!({"os": {"id": "debian", "version_id": "12"}, "memory_mib": 16384, "ipv4": ["10.0.0.5", "192.168.1.9"],
                "app": {"tier": 2}, "virtual": false}),
            &mut f,
        );
        f
    }

    fn holds(expr: &str) -> bool {
        expr.parse::<FactExpr>().unwrap_or_else(|e| panic!("{e}")).matches(&facts())
    }

    #[test]
    fn nested_keys_are_flattened() {
        let f = facts();
        assert_eq!(f["os.id"], "debian");
        assert_eq!(f["app.tier"], 2);
        assert!(f.keys().all(|k| valid_key(k)));
    }

    #[test]
    fn every_operator() {
        assert!(holds("os.id=debian") && !holds("os.id=ubuntu"));
        assert!(holds("os.version_id=1*") && !holds("os.version_id=11*"));
        assert!(holds("os.id!=ubuntu") && !holds("os.id!=debian"));
        assert!(holds("memory_mib>=16384") && !holds("memory_mib>16384"));
        assert!(holds("memory_mib<20000") && holds("memory_mib<=16384") && !holds("memory_mib<16384"));
        assert!(holds("os.version_id>11"), "a numeric string compares as a number");
        assert!(!holds("os.id>1"), "a value that is not a number does not match");
        assert!(holds("os.id~^deb") && !holds("os.id~^ub"));
        assert!(holds("app.tier") && !holds("app.region"));
        assert!(holds("ipv4=10.0.0.*") && holds("ipv4=192.168.1.9") && !holds("ipv4=172.*"));
        assert!(holds("ipv4!=172.16.0.1") && !holds("ipv4!=10.0.0.5"), "!=: no element is it");
        assert!(holds("virtual=false") && holds("app.tier=2"));
        assert!(!holds("missing!=x"), "a missing key matches nothing");
    }

    #[test]
    fn bad_expressions_point_at_the_character() {
        let e = "os.id==debian".parse::<FactExpr>().map(|_| ()).unwrap_err();
        assert!(e.at == 5 && e.reason.contains("`==`"), "{e}");
        let e = "memory_mib=>3".parse::<FactExpr>().map(|_| ()).unwrap_err();
        assert!(e.at == 10 && e.reason.contains("`=>`"), "{e}");
        let e = "memory_mib<>3".parse::<FactExpr>().map(|_| ()).unwrap_err();
        assert!(e.at == 10 && e.reason.contains("`<>`"), "{e}");
        let e = "os.id%debian".parse::<FactExpr>().map(|_| ()).unwrap_err();
        assert!(e.reason.contains("unknown comparison operator `%`") && e.at == 5, "{e}");
        assert!(e.to_string().ends_with("os.id%debian\n       ^"), "{e}");
        let e = "=x".parse::<FactExpr>().map(|_| ()).unwrap_err();
        assert_eq!(e.at, 0);
        let e = "os.id~(".parse::<FactExpr>().map(|_| ()).unwrap_err();
        assert_eq!(e.at, 6);
        let e = "memory_mib>lots".parse::<FactExpr>().map(|_| ()).unwrap_err();
        assert!(e.reason.contains("numbers") && e.at == 11, "{e}");
    }

    #[test]
    fn bad_keys_are_dropped_and_the_hash_follows_the_facts() {
        let mut f = facts();
        f.insert("bad key!".into(), json!(1));
        assert_eq!(drop_invalid_keys(&mut f), ["bad key!"]);
        assert_eq!(hash(&f), hash(&facts()));
        f.insert("os.id".into(), json!("ubuntu"));
        assert_ne!(hash(&f), hash(&facts()));
    }
}
