//! PUB topics: the stream a published request goes to, in the form its
//! subscriber asked for.

/// The PUB topic of messages for every client (stream `""`). No identity,
/// application, environment or role may start with it.
pub const BROADCAST_TOPIC: &str = "*";

/// Opens and closes every exact PUB topic: `\0web-1\0`.
///
/// XPUB (like SUB) matches prefixes: a connection holding `web-1` also
/// receives `web-10`, and one holding `pantry` every `pantry.ENV.ROLE`.
/// Pantry's agents subscribe to the exact form, which the terminator makes
/// match one stream only; the opening mark keeps the two forms apart, so
/// a bare subscriber (`web-1`, as SPEC §4 and the original agent
/// subscribe) never receives an exact-form message, nor the reverse. No
/// name may contain the mark.
pub const TOPIC_MARK: u8 = 0;

/// How a subscription names its stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TopicForm {
    /// `\0stream\0`: Pantry's agents, one stream exactly.
    Exact,
    /// The stream itself (SPEC §4, the original agent): a prefix.
    Bare,
}

impl TopicForm {
    /// The PUB topic of a message to `stream` (`""`: everyone, published
    /// under [`BROADCAST_TOPIC`]) in this form.
    pub fn topic(self, stream: &str) -> Vec<u8> {
        let stream = if stream.is_empty() { BROADCAST_TOPIC } else { stream };
        match self {
            TopicForm::Bare => stream.as_bytes().to_vec(),
            TopicForm::Exact => {
                let mut topic = Vec::with_capacity(stream.len() + 2);
                topic.push(TOPIC_MARK);
                topic.extend_from_slice(stream.as_bytes());
                topic.push(TOPIC_MARK);
                topic
            }
        }
    }

    /// Reads a topic: its form and stream. `None` for one that is not
    /// UTF-8 or has the mark anywhere else.
    pub fn parse(topic: &[u8]) -> Option<(TopicForm, &str)> {
        let text = std::str::from_utf8(topic).ok()?;
        let mark = char::from(TOPIC_MARK);
        let (form, stream) = match text.strip_prefix(mark).and_then(|t| t.strip_suffix(mark)) {
            Some(inner) => (TopicForm::Exact, inner),
            None => (TopicForm::Bare, text),
        };
        (!stream.contains(mark)).then_some((form, stream))
    }
}

/// The exact PUB topic of `stream` ([`TopicForm::Exact`]).
pub fn topic(stream: &str) -> Vec<u8> {
    TopicForm::Exact.topic(stream)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_in_both_forms() {
        assert_eq!(topic("web-1"), b"\0web-1\0");
        assert_eq!(topic(""), b"\0*\0");
        assert_eq!(TopicForm::Bare.topic("web-1"), b"web-1");
        assert_eq!(TopicForm::Bare.topic(""), b"*");
        assert_eq!(TopicForm::parse(b"\0web-1\0"), Some((TopicForm::Exact, "web-1")));
        assert_eq!(TopicForm::parse(b"web-1"), Some((TopicForm::Bare, "web-1")));
        assert_eq!(TopicForm::parse(b""), Some((TopicForm::Bare, "")));
        assert_eq!(TopicForm::parse(b"\0\0"), Some((TopicForm::Exact, "")));
        for bad in [&b"web-1\0"[..], b"\0web-1", b"\0a\0b\0", b"\xff"] {
            assert_eq!(TopicForm::parse(bad), None, "{bad:?}");
        }
        // Neither form is a prefix of the other's topics.
        assert!(!topic("web-1").starts_with(&TopicForm::Bare.topic("web-1")));
        assert!(!TopicForm::Bare.topic("web-10").starts_with(&topic("web-1")));
    }
}
