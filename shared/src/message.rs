//! Pantry's wire format: one message is a multipart ZeroMQ message of
//! `[stream, metadata JSON, body parts...]` (SPEC §3).
//!
//! Structured body parts (objects and arrays) travel as `⁂` followed by JSON;
//! every other part is a plain string or raw bytes. This is the format of the
//! original Ruby Pantry, so its agents and ours read each other.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use crate::error::DecodeError;

/// Prefix that marks a body part as JSON (U+2042, three bytes in UTF-8).
pub const JSON_MARKER: &str = "\u{2042}";

/// Longest `uuid` accepted (a UUID has 36 characters). A longer one makes
/// the message malformed, so no sender can pin memory in the server's table
/// of pending requests with huge keys.
pub const MAX_UUID_LEN: usize = 64;

/// The routing header of every message: who it is from, for whom, and how
/// it should be handled. Field order matches the original on the wire.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Metadata {
    pub uuid: String,
    #[serde(rename = "type")]
    pub message_type: String,
    pub from: String,
    pub to: String,
    pub requires_response: bool,
    pub forwarded: bool,
    pub custom: Map<String, Value>,
}

/// The metadata of a message read in place: what the server needs to judge
/// and route an answer, with `custom` kept as the sender's JSON text. An
/// answer is passed on with this frame re-encoded (`forwarded` set) and its
/// other frames untouched.
#[derive(Debug, Serialize, Deserialize)]
pub struct Head<'a> {
    #[serde(borrow)]
    pub uuid: Cow<'a, str>,
    #[serde(rename = "type", borrow)]
    pub message_type: Cow<'a, str>,
    #[serde(borrow)]
    pub from: Cow<'a, str>,
    #[serde(borrow)]
    pub to: Cow<'a, str>,
    pub requires_response: bool,
    pub forwarded: bool,
    #[serde(borrow)]
    pub custom: &'a RawValue,
}

impl<'a> Head<'a> {
    /// `None` for a frame [`Message::from_frames`] would refuse as metadata.
    pub fn parse(frame: &'a [u8]) -> Option<Head<'a>> {
        let head: Head<'a> = serde_json::from_slice(frame).ok()?;
        let is_object = head.custom.get().starts_with('{');
        (is_object && head.uuid.len() <= MAX_UUID_LEN).then_some(head)
    }

    /// The frame, as [`Message::to_frames`] would write these fields.
    pub fn to_vec(&self) -> Vec<u8> {
        // Strings, bools and JSON text already checked: it always serializes.
        serde_json::to_vec(self).unwrap_or_default()
    }
}

/// One part of a message body.
#[derive(Debug, Clone, PartialEq)]
pub enum BodyPart {
    /// An object or array, sent as `⁂` + JSON.
    Json(Value),
    /// A UTF-8 string, sent as is.
    Text(String),
    /// Bytes that are not UTF-8, sent as is.
    Bytes(Vec<u8>),
}

impl BodyPart {
    /// The part as text, if it is a plain string.
    pub fn as_text(&self) -> Option<&str> {
        match self {
            BodyPart::Text(s) => Some(s),
            _ => None,
        }
    }

    /// The part as JSON, if it is structured.
    pub fn as_json(&self) -> Option<&Value> {
        match self {
            BodyPart::Json(v) => Some(v),
            _ => None,
        }
    }

    /// The part as its frame.
    pub fn encode(&self) -> Vec<u8> {
        match self {
            BodyPart::Json(v) => {
                let mut out = JSON_MARKER.as_bytes().to_vec();
                // Serializing a Value cannot fail: its keys are always strings.
                out.extend(serde_json::to_vec(v).unwrap_or_default());
                out
            }
            BodyPart::Text(s) => s.as_bytes().to_vec(),
            BodyPart::Bytes(b) => b.clone(),
        }
    }

    fn decode(index: usize, frame: &[u8]) -> Result<BodyPart, DecodeError> {
        let marker = JSON_MARKER.as_bytes();
        if let Some(json) = frame.strip_prefix(marker) {
            let value: Value =
                serde_json::from_slice(json).map_err(|e| DecodeError::BodyJson { index, reason: e.to_string() })?;
            return Ok(BodyPart::Json(value));
        }
        Ok(match std::str::from_utf8(frame) {
            Ok(s) => BodyPart::Text(s.to_owned()),
            Err(_) => BodyPart::Bytes(frame.to_vec()),
        })
    }
}

impl From<&str> for BodyPart {
    fn from(s: &str) -> Self {
        BodyPart::Text(s.to_owned())
    }
}

impl From<String> for BodyPart {
    fn from(s: String) -> Self {
        BodyPart::Text(s)
    }
}

impl From<Value> for BodyPart {
    fn from(v: Value) -> Self {
        match v {
            Value::String(s) => BodyPart::Text(s),
            other => BodyPart::Json(other),
        }
    }
}

/// A whole Pantry message.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    /// Destination: a client identity, a filter stream (`app.env.role`) or
    /// `""` for everyone.
    pub stream: String,
    pub metadata: Metadata,
    pub body: Vec<BodyPart>,
}

impl Message {
    /// A new request of `message_type` with a fresh uuid. Version 7: uuids
    /// that grow with time keep the server's job store appending to its
    /// index of job ids rather than writing all over it.
    pub fn new(message_type: &str) -> Message {
        Message {
            stream: String::new(),
            metadata: Metadata {
                uuid: uuid::Uuid::now_v7().to_string(),
                message_type: message_type.to_owned(),
                from: String::new(),
                to: String::new(),
                requires_response: false,
                forwarded: false,
                custom: Map::new(),
            },
            body: Vec::new(),
        }
    }

    pub fn uuid(&self) -> &str {
        &self.metadata.uuid
    }

    pub fn message_type(&self) -> &str {
        &self.metadata.message_type
    }

    /// The response to this message: same uuid, type and custom, `from` and
    /// `to` swapped, sent to the requester's stream, no response required.
    pub fn response(&self) -> Message {
        let mut metadata = self.metadata.clone();
        std::mem::swap(&mut metadata.from, &mut metadata.to);
        metadata.requires_response = false;
        metadata.forwarded = false;
        Message { stream: self.metadata.from.clone(), metadata, body: Vec::new() }
    }

    /// The answer refusing this request: same uuid and type, `custom` holds
    /// only the error. The request's own `custom` is not echoed, so a refusal
    /// never costs more than a few bytes whatever the request carried.
    pub fn refusal(&self, error: impl Into<String>) -> Message {
        let mut response = Message {
            stream: self.metadata.from.clone(),
            metadata: Metadata {
                uuid: self.metadata.uuid.clone(),
                message_type: self.metadata.message_type.clone(),
                from: self.metadata.to.clone(),
                to: self.metadata.from.clone(),
                requires_response: false,
                forwarded: false,
                custom: Map::new(),
            },
            body: Vec::new(),
        };
        response.set_error(error);
        response
    }

    /// `custom.error`, set by whoever could not carry out the request.
    pub fn error(&self) -> Option<&str> {
        self.metadata.custom.get("error").and_then(Value::as_str)
    }

    pub fn set_error(&mut self, text: impl Into<String>) {
        self.metadata.custom.insert("error".into(), Value::String(text.into()));
    }

    /// Whether this is the server's list of the clients that will answer a
    /// forwarded request.
    pub fn is_client_response_list(&self) -> bool {
        self.metadata.custom.get("client_response_list") == Some(&Value::Bool(true))
    }

    /// The bytes the message takes on the wire, frames counted as sent.
    pub fn wire_size(&self) -> usize {
        let metadata = serde_json::to_vec(&self.metadata).map_or(0, |m| m.len());
        let body: usize = self
            .body
            .iter()
            .map(|part| match part {
                BodyPart::Text(t) => t.len(),
                BodyPart::Bytes(b) => b.len(),
                BodyPart::Json(v) => JSON_MARKER.len() + serde_json::to_vec(v).map_or(0, |v| v.len()),
            })
            .sum();
        self.stream.len() + metadata + body
    }

    /// The frames to send (without any ROUTER routing id).
    pub fn to_frames(&self) -> Vec<Vec<u8>> {
        let mut frames = Vec::with_capacity(2 + self.body.len());
        frames.push(self.stream.as_bytes().to_vec());
        // Metadata holds only strings, bools and a JSON map: it always serializes.
        frames.push(serde_json::to_vec(&self.metadata).unwrap_or_default());
        frames.extend(self.body.iter().map(BodyPart::encode));
        frames
    }

    /// Parse the frames of one message (without any ROUTER routing id).
    pub fn from_frames<F: AsRef<[u8]>>(frames: &[F]) -> Result<Message, DecodeError> {
        if frames.len() < 2 {
            return Err(DecodeError::TooFewFrames(frames.len()));
        }
        let stream = std::str::from_utf8(frames[0].as_ref()).map_err(|_| DecodeError::StreamNotUtf8)?;
        // A request published in the exact form (`\0stream\0`) names its
        // stream between the marks; servers before 0.2 ended it with the
        // mark alone. Nowhere else may a stream hold it, so a stream reads
        // back the same.
        let mark = char::from(crate::topic::TOPIC_MARK);
        let stream = match stream.strip_prefix(mark).and_then(|s| s.strip_suffix(mark)) {
            Some(inner) => inner,
            None => stream.strip_suffix(mark).unwrap_or(stream),
        };
        if stream.contains(mark) {
            return Err(DecodeError::StreamWithNul);
        }
        let stream = stream.to_owned();
        let metadata = parse_metadata(frames[1].as_ref())?;
        if metadata.uuid.len() > MAX_UUID_LEN {
            return Err(DecodeError::UuidTooLong(metadata.uuid.len()));
        }
        let body = frames[2..]
            .iter()
            .enumerate()
            .map(|(i, f)| BodyPart::decode(i, f.as_ref()))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Message { stream, metadata, body })
    }
}

/// Straight into the struct (the hot path); only a frame that does not fit
/// is parsed again to say why.
fn parse_metadata(bytes: &[u8]) -> Result<Metadata, DecodeError> {
    serde_json::from_slice(bytes).map_err(|fields| match serde_json::from_slice::<Value>(bytes) {
        Err(e) => DecodeError::MetadataJson(e.to_string()),
        Ok(v) if !v.is_object() => DecodeError::MetadataNotObject,
        Ok(_) => DecodeError::MetadataFields(fields.to_string()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn sample() -> Message {
        let mut m = Message::new("Echo");
        m.stream = "pantry.test.web".into();
        m.metadata.from = "admin".into();
        m.metadata.to = "pantry.test.web".into();
        m.metadata.requires_response = true;
        m.metadata.forwarded = true;
        m.metadata.custom.insert("k".into(), json!({"n": 1}));
        m.body = vec![
            BodyPart::Text("hello ⁂ world".into()),
            BodyPart::Json(json!({"a": [1, 2], "b": null})),
            BodyPart::Json(json!([1, "x"])),
            BodyPart::Bytes(vec![0xff, 0x00, 0xfe]),
            BodyPart::Text(String::new()),
        ];
        m
    }

    #[test]
    fn round_trip_of_every_field() {
        let m = sample();
        let back = Message::from_frames(&m.to_frames()).expect("decodes");
        assert_eq!(back, m);
    }

    #[test]
    fn structured_parts_carry_the_marker() {
        let frames = sample().to_frames();
        assert!(frames[3].starts_with("⁂".as_bytes()));
        assert_eq!(&frames[3][3..], br#"{"a":[1,2],"b":null}"#);
        assert_eq!(frames[2], "hello ⁂ world".as_bytes());
    }

    #[test]
    fn metadata_keeps_the_original_field_order() {
        let frames = Message::new("Status").to_frames();
        let text = String::from_utf8(frames[1].clone()).unwrap();
        let order: Vec<usize> = ["uuid", "type", "from", "to", "requires_response", "forwarded", "custom"]
            .iter()
            .map(|k| text.find(&format!("\"{k}\"")).expect("field present"))
            .collect();
        assert!(order.windows(2).all(|w| w[0] < w[1]), "{text}");
    }

    #[test]
    fn response_swaps_from_and_to_and_keeps_the_rest() {
        let m = sample();
        let r = m.response();
        assert_eq!(r.uuid(), m.uuid());
        assert_eq!(r.message_type(), "Echo");
        assert_eq!(r.metadata.from, m.metadata.to);
        assert_eq!(r.metadata.to, m.metadata.from);
        assert_eq!(r.stream, "admin");
        assert!(!r.metadata.requires_response);
        assert_eq!(r.metadata.custom, m.metadata.custom);
    }

    fn meta(fields: &str) -> Vec<u8> {
        fields.as_bytes().to_vec()
    }

    #[test]
    fn too_few_frames() {
        assert_eq!(Message::from_frames::<Vec<u8>>(&[]), Err(DecodeError::TooFewFrames(0)));
        assert_eq!(Message::from_frames(&[b"x".to_vec()]), Err(DecodeError::TooFewFrames(1)));
    }

    #[test]
    fn metadata_not_json() {
        let r = Message::from_frames(&[b"".to_vec(), meta("{not json")]);
        assert!(matches!(r, Err(DecodeError::MetadataJson(_))), "{r:?}");
    }

    #[test]
    fn metadata_not_an_object() {
        for bad in ["[1,2]", "\"text\"", "42", "null"] {
            let r = Message::from_frames(&[b"".to_vec(), meta(bad)]);
            assert_eq!(r, Err(DecodeError::MetadataNotObject), "{bad}");
        }
    }

    #[test]
    fn wrong_field_types() {
        let good = serde_json::to_value(&Message::new("Echo").metadata).unwrap();
        for (field, bad) in [
            ("uuid", json!(7)),
            ("type", json!(null)),
            ("from", json!([])),
            ("to", json!({})),
            ("requires_response", json!("yes")),
            ("forwarded", json!(1)),
            ("custom", json!("x")),
        ] {
            let mut v = good.clone();
            v[field] = bad;
            let r = Message::from_frames(&[b"".to_vec(), serde_json::to_vec(&v).unwrap()]);
            assert!(matches!(r, Err(DecodeError::MetadataFields(_))), "{field}: {r:?}");
        }
        let mut missing = good.clone();
        missing.as_object_mut().unwrap().remove("uuid");
        let r = Message::from_frames(&[b"".to_vec(), serde_json::to_vec(&missing).unwrap()]);
        assert!(matches!(r, Err(DecodeError::MetadataFields(_))), "{r:?}");
    }

    #[test]
    fn invalid_utf8_where_text_is_required() {
        let good = Message::new("Echo").to_frames();
        let r = Message::from_frames(&[vec![0xff, 0xfe], good[1].clone()]);
        assert_eq!(r, Err(DecodeError::StreamNotUtf8));
        let r = Message::from_frames(&[b"".to_vec(), vec![b'{', 0xff, b'}']]);
        assert!(matches!(r, Err(DecodeError::MetadataJson(_))), "{r:?}");
        let mut bad_body = "⁂".as_bytes().to_vec();
        bad_body.extend([b'"', 0xff, b'"']);
        let r = Message::from_frames(&[b"".to_vec(), good[1].clone(), bad_body]);
        assert!(matches!(r, Err(DecodeError::BodyJson { index: 0, .. })), "{r:?}");
    }

    #[test]
    fn long_numbers_re_encode_to_the_same_value() {
        // Found by fuzzing: without serde_json's float_roundtrip, a long
        // integer parsed as f64 came back as a different f64.
        let good = Message::new("Echo").to_frames();
        let body = format!("⁂{{\"n\":[{}]}}", "6".repeat(45)).into_bytes();
        let m = Message::from_frames(&[b"".to_vec(), good[1].clone(), body]).unwrap();
        assert_eq!(Message::from_frames(&m.to_frames()).unwrap(), m);
    }

    #[test]
    fn long_uuids_and_topic_terminators() {
        let mut m = Message::new("Echo");
        m.metadata.uuid = "u".repeat(MAX_UUID_LEN);
        assert!(Message::from_frames(&m.to_frames()).is_ok());
        m.metadata.uuid.push('u');
        assert_eq!(Message::from_frames(&m.to_frames()), Err(DecodeError::UuidTooLong(MAX_UUID_LEN + 1)));
        let mut frames = Message::new("Echo").to_frames();
        frames[0] = crate::topic::topic("web-1");
        assert_eq!(Message::from_frames(&frames).unwrap().stream, "web-1");
        // As servers before the exact form's opening mark published.
        frames[0] = b"web-1\0".to_vec();
        assert_eq!(Message::from_frames(&frames).unwrap().stream, "web-1");
        frames[0] = b"\0\0\0".to_vec();
        assert_eq!(Message::from_frames(&frames), Err(DecodeError::StreamWithNul));
        // Found by fuzzing: "a\0\0" read as "a\0", which does not read back.
        frames[0] = b"a\0\0".to_vec();
        assert_eq!(Message::from_frames(&frames), Err(DecodeError::StreamWithNul));
        frames[0] = b"a\0b".to_vec();
        assert_eq!(Message::from_frames(&frames), Err(DecodeError::StreamWithNul));
    }

    #[test]
    fn refusals_do_not_echo_custom() {
        let mut m = sample();
        m.metadata.custom.insert("big".into(), json!("x".repeat(1000)));
        let r = m.refusal("not authorized");
        assert_eq!((r.uuid(), r.message_type(), r.error()), (m.uuid(), "Echo", Some("not authorized")));
        assert_eq!(r.metadata.custom.len(), 1);
        assert_eq!(r.metadata.to, m.metadata.from);
    }

    #[test]
    fn bad_json_after_the_marker() {
        let good = Message::new("Echo").to_frames();
        let r = Message::from_frames(&[b"".to_vec(), good[1].clone(), b"ok".to_vec(), "⁂{".as_bytes().to_vec()]);
        assert!(matches!(r, Err(DecodeError::BodyJson { index: 1, .. })), "{r:?}");
    }

    #[test]
    fn the_head_reads_and_writes_what_the_message_does() {
        let mut m = sample();
        m.metadata.forwarded = false;
        m.metadata.custom.insert("error".into(), json!("x\"y"));
        let frames = m.to_frames();
        let mut head = Head::parse(&frames[1]).unwrap();
        assert_eq!((head.uuid.as_ref(), head.from.as_ref()), (m.uuid(), m.metadata.from.as_str()));
        assert_eq!(head.to_vec(), frames[1], "same bytes back");
        head.forwarded = true;
        m.metadata.forwarded = true;
        assert_eq!(head.to_vec(), m.to_frames()[1]);
        // Escapes in the strings it reads.
        let escaped = br#"{"uuid":"u\u0041","type":"Echo","from":"a","to":"","requires_response":false,"forwarded":false,"custom":{}}"#;
        assert_eq!(Head::parse(escaped).unwrap().uuid, "uA");
        for bad in [
            &br#"{"uuid":"u","type":"Echo","from":"a","to":"","requires_response":false,"forwarded":false,"custom":[]}"#[..],
            br#"{"uuid":"u","type":"Echo","from":"a","to":"","requires_response":false,"custom":{}}"#,
            b"[]",
        ] {
            assert!(Head::parse(bad).is_none());
            assert!(parse_metadata(bad).is_err());
        }
        let long = format!(
            r#"{{"uuid":"{}","type":"Echo","from":"a","to":"","requires_response":false,"forwarded":false,"custom":{{}}}}"#,
            "u".repeat(MAX_UUID_LEN + 1)
        );
        assert!(Head::parse(long.as_bytes()).is_none());
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        // A small deterministic generator: bounded, no extra crates.
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let good = Message::new("Echo").to_frames();
        for _ in 0..2000 {
            let n = (next() % 5) as usize;
            let mut frames: Vec<Vec<u8>> =
                (0..n).map(|_| (0..(next() % 12)).map(|_| (next() & 0xff) as u8).collect()).collect();
            if n >= 2 && next() % 2 == 0 {
                frames[1] = good[1].clone();
            }
            let _ = Message::from_frames(&frames);
        }
    }
}
