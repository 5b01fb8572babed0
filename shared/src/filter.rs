//! Targeting: which clients a stream or a filter selects (SPEC §4).
//!
//! A client subscribes to its identity, `app`, `app.env` and `app.env.role`
//! for each role, plus [`BROADCAST_TOPIC`]. A message reaches it when its
//! stream is exactly one of those; SUB matching is only a prefix match, so
//! the client checks again with [`ClientFilter::accepts_stream`].

use std::collections::HashSet;

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;

use crate::message::Message;

pub use crate::topic::{topic, TopicForm, BROADCAST_TOPIC, TOPIC_MARK};

/// Characters that do not show, or change how the text around them shows:
/// controls (C0, DEL, C1), Unicode's format characters (category Cf:
/// zero-width spaces and joiners, bidirectional overrides and isolates,
/// the byte-order mark, the soft hyphen, tag characters, ...), and the
/// blank characters that render as nothing (Hangul fillers, the braille
/// blank, the combining grapheme joiner). A name holding one can look like
/// another (`web-3` and `web-3\u{200b}`, or `\u{202e}3-bew`).
pub fn is_hidden(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{00ad}'
                | '\u{034f}'
                | '\u{0600}'..='\u{0605}'
                | '\u{061c}'
                | '\u{06dd}'
                | '\u{070f}'
                | '\u{0890}'..='\u{0891}'
                | '\u{08e2}'
                | '\u{115f}'..='\u{1160}'
                | '\u{17b4}'..='\u{17b5}'
                | '\u{180b}'..='\u{180f}'
                | '\u{200b}'..='\u{200f}'
                | '\u{202a}'..='\u{202e}'
                | '\u{2060}'..='\u{206f}'
                | '\u{2800}'
                | '\u{3164}'
                | '\u{fe00}'..='\u{fe0f}'
                | '\u{feff}'
                | '\u{ffa0}'
                | '\u{fff9}'..='\u{fffb}'
                | '\u{110bd}'
                | '\u{110cd}'
                | '\u{13430}'..='\u{1343f}'
                | '\u{1bca0}'..='\u{1bca3}'
                | '\u{1d173}'..='\u{1d17a}'
                | '\u{e0000}'..='\u{e0fff}'
        )
}

/// Longest identity, application, environment or role.
pub const MAX_NAME_LEN: usize = 253;

/// Most roles one client may have.
pub const MAX_ROLES: usize = 64;

/// Why a name cannot be an identity, application, environment or role.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("{kind} may not be empty")]
    Empty { kind: &'static str },
    #[error("{kind} is {len} bytes long (at most {MAX_NAME_LEN})")]
    TooLong { kind: &'static str, len: usize },
    #[error("{kind} `{name}` may not start with `{BROADCAST_TOPIC}`")]
    Broadcast { kind: &'static str, name: String },
    #[error("{kind} {name:?} may not contain {what} (U+{code:04X})")]
    Hidden { kind: &'static str, name: String, what: &'static str, code: u32 },
    #[error("{kind} `{name}` may not start or end with `.` or hold `..`")]
    Dots { kind: &'static str, name: String },
    #[error("{kind} `{name}` may not contain `.`")]
    Dot { kind: &'static str, name: String },
    #[error("{0} roles (at most {MAX_ROLES})")]
    TooManyRoles(usize),
}

/// Why `-a/-e/-r` do not make a stream to send to.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    #[error("targeting an environment needs --application too")]
    EnvironmentAlone,
    #[error("targeting a role needs --application and --environment too")]
    RoleAlone,
    #[error("a command sent to clients can target one role only; `status` accepts several")]
    SeveralRoles,
}

/// Why a request's identity patterns cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentitiesError {
    #[error("invalid identity pattern `{pattern}`: {reason}")]
    BadPattern { pattern: String, reason: String },
    #[error("`identities` must be a list of strings")]
    NotStrings,
}

/// Who a client is (when it registers) or whom a request selects (status).
/// `None` and an empty role list mean "any".
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientFilter {
    #[serde(default, deserialize_with = "absent_if_false")]
    pub application: Option<String>,
    #[serde(default, deserialize_with = "absent_if_false")]
    pub environment: Option<String>,
    #[serde(default, deserialize_with = "roles_or_empty")]
    pub roles: Vec<String>,
    #[serde(default, deserialize_with = "absent_if_false")]
    pub identity: Option<String>,
}

/// The original Ruby Pantry sends `false` where a filter field is absent.
fn absent_if_false<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Field {
        Text(String),
        Flag(bool),
        Null(()),
    }
    match Field::deserialize(d)? {
        Field::Text(s) if !s.is_empty() => Ok(Some(s)),
        Field::Text(_) | Field::Null(()) | Field::Flag(false) => Ok(None),
        Field::Flag(true) => Err(serde::de::Error::custom("expected a string, null or false")),
    }
}

fn roles_or_empty<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    Ok(Option::<Vec<String>>::deserialize(d)?.unwrap_or_default())
}

impl ClientFilter {
    /// Every stream a client with this description listens to, in the order
    /// of SPEC §4 (identity first), without the broadcast topic.
    pub fn streams(&self) -> Vec<String> {
        let mut list = Vec::new();
        if let Some(identity) = &self.identity {
            list.push(identity.clone());
        }
        if let Some(app) = &self.application {
            list.push(app.clone());
            if let Some(env) = &self.environment {
                let base = format!("{app}.{env}");
                list.push(base.clone());
                list.extend(self.roles.iter().map(|role| format!("{base}.{role}")));
            }
        }
        list
    }

    /// Whether a message sent to `stream` is meant for this client.
    pub fn accepts_stream(&self, stream: &str) -> bool {
        if stream.is_empty() || stream == BROADCAST_TOPIC || self.identity.as_deref() == Some(stream) {
            return true;
        }
        let mut parts = stream.splitn(3, '.');
        let first = parts.next().unwrap_or_default();
        match (parts.next(), parts.next()) {
            (None, None) => self.application.as_deref() == Some(first),
            (Some(env), None) => self.application.as_deref() == Some(first) && self.environment.as_deref() == Some(env),
            (Some(env), Some(role)) => {
                self.application.as_deref() == Some(first)
                    && self.environment.as_deref() == Some(env)
                    && self.roles.iter().any(|r| r == role)
            }
            (None, Some(_)) => false,
        }
    }

    /// The one stream a request with this filter is sent to: the most
    /// specific of `app`, `app.env`, `app.env.role`. A role or environment
    /// needs everything above it, and only one role can be a stream.
    pub fn target_stream(&self) -> Result<String, TargetError> {
        if let Some(identity) = &self.identity {
            return Ok(identity.clone());
        }
        let mut parts: Vec<&str> = Vec::new();
        match (&self.application, &self.environment) {
            (Some(app), env) => {
                parts.push(app);
                if let Some(env) = env {
                    parts.push(env);
                }
            }
            (None, Some(_)) => return Err(TargetError::EnvironmentAlone),
            (None, None) => {}
        }
        match self.roles.as_slice() {
            [] => {}
            [role] if parts.len() == 2 => parts.push(role),
            [_] => return Err(TargetError::RoleAlone),
            _ => return Err(TargetError::SeveralRoles),
        }
        Ok(parts.join("."))
    }

    /// Whether a client described by `client` is selected by this filter
    /// (status): every given field must match; with roles, any one of them.
    pub fn selects(&self, client: &ClientFilter) -> bool {
        let field = |want: &Option<String>, have: &Option<String>| want.is_none() || want == have;
        field(&self.identity, &client.identity)
            && field(&self.application, &client.application)
            && field(&self.environment, &client.environment)
            && (self.roles.is_empty() || self.roles.iter().any(|r| client.roles.contains(r)))
    }

    /// Why a name cannot be used as an application, environment or role, if
    /// it cannot: those are the parts of `app.env.role` streams, so they may
    /// not contain a dot.
    pub fn check_name(kind: &'static str, name: &str) -> Result<(), NameError> {
        Self::check_identity_like(kind, name)?;
        if name.contains('.') {
            return Err(NameError::Dot { kind, name: name.to_owned() });
        }
        Ok(())
    }

    /// Why a name cannot be an identity, if it cannot. Identities may contain
    /// dots (a host's fully qualified name); the server keeps them apart from
    /// `app.env.role` streams (see `docs/security.md`).
    pub fn check_identity(name: &str) -> Result<(), NameError> {
        Self::check_identity_like("identity", name)
    }

    fn check_identity_like(kind: &'static str, name: &str) -> Result<(), NameError> {
        let owned = || name.to_owned();
        if name.is_empty() {
            return Err(NameError::Empty { kind });
        }
        if name.len() > MAX_NAME_LEN {
            return Err(NameError::TooLong { kind, len: name.len() });
        }
        if name.starts_with(BROADCAST_TOPIC) {
            return Err(NameError::Broadcast { kind, name: owned() });
        }
        if let Some(c) = name.chars().find(|c| c.is_whitespace() || is_hidden(*c)) {
            let what = if c.is_whitespace() { "a space" } else { "an invisible or control character" };
            return Err(NameError::Hidden { kind, name: owned(), what, code: u32::from(c) });
        }
        if name.starts_with('.') || name.ends_with('.') || name.contains("..") {
            return Err(NameError::Dots { kind, name: owned() });
        }
        Ok(())
    }

    /// Checks every name in the filter.
    pub fn validate(&self) -> Result<(), NameError> {
        if let Some(identity) = &self.identity {
            Self::check_identity(identity)?;
        }
        for (kind, value) in [("application", &self.application), ("environment", &self.environment)] {
            if let Some(v) = value {
                Self::check_name(kind, v)?;
            }
        }
        if self.roles.len() > MAX_ROLES {
            return Err(NameError::TooManyRoles(self.roles.len()));
        }
        self.roles.iter().try_for_each(|r| Self::check_name("role", r))
    }
}

/// `custom.identities` of a request: the identities it targets, as shell
/// globs (`web-*`). The server expands them against the registry (within
/// the request's stream) and sends to each matching identity's own stream.
pub const IDENTITIES_FIELD: &str = "identities";

/// Identity patterns, checked. Plain names (no `*`, `?` or `[`) are kept
/// in a set: a request naming a thousand clients costs a look-up per
/// client, not a thousand comparisons.
#[derive(Debug, Clone)]
pub struct Identities {
    exact: HashSet<String>,
    globs: Vec<glob::Pattern>,
}

impl Identities {
    /// Reads `patterns`; an empty list is `None` (no identity targeting).
    pub fn parse(patterns: &[String]) -> Result<Option<Identities>, IdentitiesError> {
        if patterns.is_empty() {
            return Ok(None);
        }
        let mut identities = Identities { exact: HashSet::new(), globs: Vec::new() };
        for p in patterns {
            if p.contains(['*', '?', '[']) {
                let glob = glob::Pattern::new(p)
                    .map_err(|e| IdentitiesError::BadPattern { pattern: p.clone(), reason: e.to_string() })?;
                identities.globs.push(glob);
            } else {
                identities.exact.insert(p.clone());
            }
        }
        Ok(Some(identities))
    }

    /// The patterns in a request's `custom`, if any.
    pub fn of(request: &Message) -> Result<Option<Identities>, IdentitiesError> {
        match request.metadata.custom.get(IDENTITIES_FIELD) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Array(items)) => {
                let patterns: Option<Vec<String>> = items.iter().map(|v| v.as_str().map(str::to_owned)).collect();
                Self::parse(&patterns.ok_or(IdentitiesError::NotStrings)?)
            }
            Some(_) => Err(IdentitiesError::NotStrings),
        }
    }

    /// Puts `patterns` in a request.
    pub fn attach(request: &mut Message, patterns: &[String]) {
        if !patterns.is_empty() {
            request.metadata.custom.insert(IDENTITIES_FIELD.into(), patterns.to_vec().into());
        }
    }

    pub fn matches(&self, identity: &str) -> bool {
        self.exact.contains(identity) || self.globs.iter().any(|p| p.matches(identity))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host1() -> ClientFilter {
        ClientFilter {
            identity: Some("host-1".into()),
            application: Some("pantry".into()),
            environment: Some("test".into()),
            roles: vec!["web".into(), "db".into()],
        }
    }

    #[test]
    fn streams_per_spec() {
        assert_eq!(host1().streams(), ["host-1", "pantry", "pantry.test", "pantry.test.web", "pantry.test.db"]);
    }

    #[test]
    fn accepts_exact_streams_only() {
        let c = host1();
        for s in ["", "*", "host-1", "pantry", "pantry.test", "pantry.test.web", "pantry.test.db"] {
            assert!(c.accepts_stream(s), "{s}");
        }
        for s in ["host-10", "pantry.prod", "pantry.test.app", "pantryx", "pantry.test.web.x", "other"] {
            assert!(!c.accepts_stream(s), "{s}");
        }
    }

    #[test]
    fn target_stream_is_the_most_specific() {
        let mut f = ClientFilter::default();
        assert_eq!(f.target_stream().unwrap(), "");
        f.application = Some("pantry".into());
        assert_eq!(f.target_stream().unwrap(), "pantry");
        f.environment = Some("test".into());
        assert_eq!(f.target_stream().unwrap(), "pantry.test");
        f.roles = vec!["web".into()];
        assert_eq!(f.target_stream().unwrap(), "pantry.test.web");
        f.roles.push("db".into());
        assert!(f.target_stream().is_err());
        let env_only = ClientFilter { environment: Some("test".into()), ..Default::default() };
        assert!(env_only.target_stream().is_err());
        let role_only = ClientFilter { roles: vec!["web".into()], ..Default::default() };
        assert!(role_only.target_stream().is_err());
    }

    #[test]
    fn selects_by_every_given_field() {
        let c = host1();
        assert!(ClientFilter::default().selects(&c));
        let by = |a: Option<&str>, e: Option<&str>, r: &[&str]| ClientFilter {
            application: a.map(Into::into),
            environment: e.map(Into::into),
            roles: r.iter().map(|s| s.to_string()).collect(),
            identity: None,
        };
        assert!(by(Some("pantry"), None, &[]).selects(&c));
        assert!(by(Some("pantry"), Some("test"), &["db"]).selects(&c));
        assert!(by(None, None, &["web", "cache"]).selects(&c));
        assert!(!by(Some("pantry"), Some("prod"), &[]).selects(&c));
        assert!(!by(None, None, &["cache"]).selects(&c));
    }

    #[test]
    fn original_false_means_absent() {
        let f: ClientFilter =
            serde_json::from_str(r#"{"application":false,"environment":false,"roles":[],"identity":null}"#).unwrap();
        assert_eq!(f, ClientFilter::default());
        let f: ClientFilter = serde_json::from_str(r#"{"application":"a","roles":null}"#).unwrap();
        assert_eq!(f.application.as_deref(), Some("a"));
        assert!(serde_json::from_str::<ClientFilter>(r#"{"application":true}"#).is_err());
        assert!(serde_json::from_str::<ClientFilter>(r#"{"roles":"web"}"#).is_err());
    }

    #[test]
    fn names_are_checked() {
        assert!(ClientFilter::check_name("role", "web").is_ok());
        assert!(ClientFilter::check_name("role", "*web").is_err());
        assert!(ClientFilter::check_name("role", "a.b").is_err());
        assert!(ClientFilter::check_name("role", "").is_err());
        assert!(ClientFilter::check_name("role", "a\nb").is_err());
        for invisible in ['\u{200b}', '\u{202e}', '\u{2066}', '\u{2069}', '\u{feff}', '\u{ad}', '\u{e0041}'] {
            let e = ClientFilter::check_name("application", &format!("web{invisible}")).unwrap_err();
            assert!(e.to_string().contains("invisible or control character"), "{e}");
        }
        assert!(ClientFilter::check_identity("héllo-wörld").is_ok(), "visible letters are fine");
        assert!(ClientFilter::check_identity("web1.example.com").is_ok());
        for bad in
            ["", "*x", "a b", "x\0", ".a", "a.", "a..b", "web-3\u{200b}", "\u{202e}3-bew", "w\u{ad}eb", "\u{feff}web"]
        {
            assert!(ClientFilter::check_identity(bad).is_err(), "{bad:?}");
        }
        assert!(ClientFilter::check_identity(&"a".repeat(MAX_NAME_LEN + 1)).is_err());
        let many = ClientFilter { roles: (0..=MAX_ROLES).map(|i| format!("r{i}")).collect(), ..Default::default() };
        assert!(many.validate().is_err());
    }

    #[test]
    fn dotted_identities_are_accepted_as_themselves() {
        let c = ClientFilter { identity: Some("web1.example.com".into()), ..host1() };
        assert!(c.accepts_stream("web1.example.com"));
        assert!(!c.accepts_stream("web1.example"));
        assert!(c.accepts_stream("pantry.test.web"));
    }

    #[test]
    fn identity_globs() {
        let ids = Identities::parse(&["web-*".into(), "db-1".into()]).unwrap().unwrap();
        assert!(ids.matches("web-3") && ids.matches("db-1") && !ids.matches("db-10"));
        assert!(Identities::parse(&[]).unwrap().is_none());
        assert!(Identities::parse(&["web-[".into()]).is_err());
        let mut m = Message::new("Echo");
        Identities::attach(&mut m, &["web-?".into()]);
        assert!(Identities::of(&m).unwrap().unwrap().matches("web-7"));
        m.metadata.custom.insert(IDENTITIES_FIELD.into(), 5.into());
        assert!(Identities::of(&m).is_err());
    }
}
