//! The codec against real messages captured from the original Ruby Pantry
//! (`tests/data/wire-vectors-ruby-pantry.json`): every one decodes, and every
//! request re-encodes to the very same frames.

use pantry_shared::commands::{register_client, status};
use pantry_shared::filter::ClientFilter;
use pantry_shared::Message;
use serde_json::Value;

fn vectors() -> Vec<(String, String, Vec<Vec<u8>>)> {
    let text = include_str!("data/wire-vectors-ruby-pantry.json");
    let doc: Value = serde_json::from_str(text).expect("vectors parse");
    doc["messages"]
        .as_array()
        .expect("messages array")
        .iter()
        .map(|m| {
            let frames = m["frames"]
                .as_array()
                .expect("frames")
                .iter()
                .map(|f| f.as_str().expect("frame text").as_bytes().to_vec())
                .collect();
            (m["socket"].as_str().unwrap().to_owned(), m["direction"].as_str().unwrap().to_owned(), frames)
        })
        .collect()
}

#[test]
fn every_captured_message_decodes() {
    let all = vectors();
    assert!(all.len() >= 8, "expected the whole capture, got {}", all.len());
    for (socket, direction, frames) in &all {
        let m = Message::from_frames(frames).unwrap_or_else(|e| panic!("{socket} {direction}: {e}"));
        assert!(!m.uuid().is_empty());
    }
}

#[test]
fn requests_re_encode_to_the_same_frames() {
    let mut requests = 0;
    for (socket, direction, frames) in vectors() {
        let m = Message::from_frames(&frames).unwrap();
        // The original's responses are re-encoded too: byte-for-byte equality
        // holds for every message, requests included.
        assert_eq!(m.to_frames(), frames, "{socket} {direction}");
        if direction == "cli->srv" {
            requests += 1;
        }
    }
    assert!(requests >= 4);
}

#[test]
fn original_bodies_read_as_pantry_commands() {
    let all = vectors();
    let find = |kind: &str, dir: &str| {
        all.iter()
            .map(|(_, d, f)| (d.clone(), Message::from_frames(f).unwrap()))
            .find(|(d, m)| {
                m.message_type() == kind
                    && d == dir
                    && m.metadata.requires_response == (dir == "cli->srv" && kind != "RegisterClient")
            })
            .map(|(_, m)| m)
            .unwrap_or_else(|| panic!("no {kind} {dir}"))
    };
    let reg = find("RegisterClient", "cli->srv");
    let who = register_client::parse(&reg).unwrap().client;
    assert_eq!(who.identity.as_deref(), Some("cli-user"));
    assert_eq!(who.application, None);

    // `false` where a filter field is absent reads as absent.
    let st = find("Status", "cli->srv");
    assert_eq!(status::parse(&st).unwrap(), ClientFilter::default());

    let echo = find("Echo", "cli->srv");
    assert_eq!(echo.stream, "pantry");
    assert_eq!(echo.body[0].as_text(), Some("hello"));
}
