//! MLLP framing: bytes ⇄ frames, nothing else.
//!
//! A frame is `<VT> payload <FS><CR>` (0x0B … 0x1C 0x0D). The codec finds frames in whatever pieces
//! the socket delivers (one frame over many reads, many frames in one read), enforces a maximum
//! frame size, and resynchronises on bytes outside a frame: they are dropped and counted, never
//! treated as a message. Parsing happens after, on whole frames.
//!
//! Written by hand because the one crate for it (`hl7-mllp-codec`) merges pipelined frames and has
//! no size limit (see FINDINGS.md); the framing itself is a few lines over memchr.

use bytes::{Buf, Bytes, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

/// Start block, `<VT>`.
pub const START_BLOCK: u8 = 0x0b;
/// End block, `<FS>`.
pub const END_BLOCK: u8 = 0x1c;
/// Carriage return that must follow the end block.
pub const CARRIAGE_RETURN: u8 = 0x0d;

/// How much of an oversized frame is kept, so that its MSH can still be read for the NAK.
pub const OVERSIZED_HEAD_BYTES: usize = 64 * 1024;

/// What the decoder yields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// A complete frame's payload, without the framing bytes.
    Message(Bytes),
    /// A frame that grew past the maximum size. `head` holds its first bytes (enough to read MSH);
    /// the rest is discarded up to the frame's end block.
    Oversized { head: Bytes, max_frame_bytes: usize },
}

/// Errors of the framing layer.
#[derive(Debug, thiserror::Error)]
pub enum MllpError {
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
    /// The peer closed the connection in the middle of a frame.
    #[error("connection closed in the middle of a frame ({buffered} bytes without an end block)")]
    IncompleteFrame { buffered: usize },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Between frames: anything but a start block is garbage.
    Idle,
    /// Inside a frame; `scanned` bytes after the start block have been searched already, so a
    /// sender trickling one byte at a time costs O(n), not O(n²).
    InFrame { scanned: usize },
    /// Inside an oversized frame whose head was already delivered: drop bytes until its end.
    Skipping,
}

/// The MLLP frame codec.
#[derive(Debug)]
pub struct MllpCodec {
    max_frame_bytes: usize,
    state: State,
    discarded_bytes: u64,
    resyncs: u64,
}

impl MllpCodec {
    /// `max_frame_bytes` bounds the payload of one frame (and so the memory one connection holds).
    pub fn new(max_frame_bytes: usize) -> Self {
        Self {
            max_frame_bytes,
            state: State::Idle,
            discarded_bytes: 0,
            resyncs: 0,
        }
    }

    /// Bytes dropped because they were outside a frame (or in an abandoned frame).
    pub fn discarded_bytes(&self) -> u64 {
        self.discarded_bytes
    }

    /// How many times the decoder had to resynchronise: garbage before a start block, a frame
    /// restarted by a new start block, or an end block not followed by a carriage return.
    pub fn resyncs(&self) -> u64 {
        self.resyncs
    }

    fn discard(&mut self, src: &mut BytesMut, n: usize) {
        if n > 0 {
            src.advance(n);
            self.discarded_bytes += n as u64;
        }
    }
}

impl Decoder for MllpCodec {
    type Item = Frame;
    type Error = MllpError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, MllpError> {
        loop {
            match self.state {
                State::Idle => {
                    if src.is_empty() {
                        return Ok(None);
                    }
                    match memchr::memchr(START_BLOCK, src) {
                        Some(0) => {
                            self.state = State::InFrame { scanned: 0 };
                        }
                        Some(at) => {
                            self.resyncs += 1;
                            self.discard(src, at);
                            self.state = State::InFrame { scanned: 0 };
                        }
                        None => {
                            let n = src.len();
                            self.resyncs += 1;
                            self.discard(src, n);
                            return Ok(None);
                        }
                    }
                }
                State::InFrame { scanned } => {
                    // src[0] is the start block; the payload starts at 1.
                    let body = &src[1..];
                    let found = memchr::memchr2(END_BLOCK, START_BLOCK, &body[scanned..])
                        .map(|i| i + scanned);
                    match found {
                        Some(i) if body[i] == START_BLOCK => {
                            // A new start block before the end: the sender abandoned the frame
                            // (e.g. it reconnected logic-wise and resent). Drop the partial one.
                            self.resyncs += 1;
                            self.discard(src, i + 1);
                            self.state = State::InFrame { scanned: 0 };
                        }
                        Some(i) => {
                            if i > self.max_frame_bytes {
                                return Ok(Some(self.oversized(src)));
                            }
                            if i + 1 >= body.len() {
                                // End block is the last byte so far: wait for the CR.
                                self.state = State::InFrame { scanned: i };
                                return Ok(None);
                            }
                            let after = body[i + 1];
                            let mut frame = src.split_to(1 + i + 1);
                            frame.advance(1);
                            frame.truncate(i);
                            if after == CARRIAGE_RETURN {
                                src.advance(1);
                            } else {
                                // Lenient: an end block without its CR still ends the frame;
                                // what follows is resynchronised on.
                                self.resyncs += 1;
                            }
                            self.state = State::Idle;
                            return Ok(Some(Frame::Message(frame.freeze())));
                        }
                        None => {
                            if body.len() > self.max_frame_bytes {
                                return Ok(Some(self.oversized(src)));
                            }
                            self.state = State::InFrame {
                                scanned: body.len(),
                            };
                            return Ok(None);
                        }
                    }
                }
                State::Skipping => match memchr::memchr(END_BLOCK, src) {
                    Some(i) => {
                        let n = if src.get(i + 1) == Some(&CARRIAGE_RETURN) {
                            i + 2
                        } else {
                            i + 1
                        };
                        self.discard(src, n);
                        self.state = State::Idle;
                    }
                    None => {
                        let n = src.len();
                        self.discard(src, n);
                        return Ok(None);
                    }
                },
            }
        }
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, MllpError> {
        if let Some(frame) = self.decode(src)? {
            return Ok(Some(frame));
        }
        match self.state {
            State::InFrame { .. } => {
                let buffered = src.len();
                let n = src.len();
                self.discard(src, n);
                self.state = State::Idle;
                Err(MllpError::IncompleteFrame { buffered })
            }
            State::Skipping => {
                self.state = State::Idle;
                Err(MllpError::IncompleteFrame { buffered: 0 })
            }
            State::Idle => Ok(None),
        }
    }
}

impl MllpCodec {
    fn oversized(&mut self, src: &mut BytesMut) -> Frame {
        let keep = OVERSIZED_HEAD_BYTES.min(src.len().saturating_sub(1));
        let mut head = src.split_to(1 + keep);
        head.advance(1);
        // Whatever else is buffered belongs to the oversized frame until its end block.
        self.state = State::Skipping;
        Frame::Oversized {
            head: head.freeze(),
            max_frame_bytes: self.max_frame_bytes,
        }
    }
}

impl<T: AsRef<[u8]>> Encoder<T> for MllpCodec {
    type Error = MllpError;

    fn encode(&mut self, payload: T, dst: &mut BytesMut) -> Result<(), MllpError> {
        let payload = payload.as_ref();
        dst.reserve(payload.len() + 3);
        dst.extend_from_slice(&[START_BLOCK]);
        dst.extend_from_slice(payload);
        dst.extend_from_slice(&[END_BLOCK, CARRIAGE_RETURN]);
        Ok(())
    }
}

/// Wraps a payload in MLLP framing.
pub fn frame(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 3);
    out.push(START_BLOCK);
    out.extend_from_slice(payload);
    out.push(END_BLOCK);
    out.push(CARRIAGE_RETURN);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(codec: &mut MllpCodec, chunks: &[&[u8]]) -> (Vec<Frame>, Option<String>) {
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        for chunk in chunks {
            buf.extend_from_slice(chunk);
            while let Some(f) = codec.decode(&mut buf).unwrap() {
                out.push(f);
            }
        }
        loop {
            match codec.decode_eof(&mut buf) {
                Ok(Some(f)) => out.push(f),
                Ok(None) => return (out, None),
                Err(e) => return (out, Some(e.to_string())),
            }
        }
    }

    fn msg(s: &[u8]) -> Frame {
        Frame::Message(Bytes::copy_from_slice(s))
    }

    #[test]
    fn table_of_framing_cases() {
        struct Case {
            name: &'static str,
            chunks: Vec<&'static [u8]>,
            frames: Vec<Frame>,
            eof_error: bool,
            discarded: u64,
        }
        let cases = vec![
            Case {
                name: "empty frame",
                chunks: vec![b"\x0b\x1c\x0d"],
                frames: vec![msg(b"")],
                eof_error: false,
                discarded: 0,
            },
            Case {
                name: "CR inside a message",
                chunks: vec![b"\x0bMSH|a\rPID|b\r\x1c\x0d"],
                frames: vec![msg(b"MSH|a\rPID|b\r")],
                eof_error: false,
                discarded: 0,
            },
            Case {
                name: "several frames in one read",
                chunks: vec![b"\x0ba\x1c\x0d\x0bb\x1c\x0d\x0bc\x1c\x0d"],
                frames: vec![msg(b"a"), msg(b"b"), msg(b"c")],
                eof_error: false,
                discarded: 0,
            },
            Case {
                name: "one frame across many reads",
                chunks: vec![b"\x0b", b"MS", b"H|", b"x", b"\x1c", b"\x0d"],
                frames: vec![msg(b"MSH|x")],
                eof_error: false,
                discarded: 0,
            },
            Case {
                name: "garbage before the start block is dropped and counted",
                chunks: vec![b"GET / HTTP/1.1\r\n\x0bm\x1c\x0d"],
                frames: vec![msg(b"m")],
                eof_error: false,
                discarded: 16,
            },
            Case {
                name: "garbage between frames",
                chunks: vec![b"\x0ba\x1c\x0d\r\n\x0bb\x1c\x0d"],
                frames: vec![msg(b"a"), msg(b"b")],
                eof_error: false,
                discarded: 2,
            },
            Case {
                name: "missing start block",
                chunks: vec![b"msg\x1c\x0d"],
                frames: vec![],
                eof_error: false,
                discarded: 5,
            },
            Case {
                name: "missing end block",
                chunks: vec![b"\x0bmsg\x0d"],
                frames: vec![],
                eof_error: true,
                discarded: 5,
            },
            Case {
                name: "new start block abandons a partial frame",
                chunks: vec![b"\x0bpartial\x0bwhole\x1c\x0d"],
                frames: vec![msg(b"whole")],
                eof_error: false,
                discarded: 8,
            },
            Case {
                name: "end block without CR still ends the frame",
                chunks: vec![b"\x0ba\x1cX\x0bb\x1c\x0d"],
                frames: vec![msg(b"a"), msg(b"b")],
                eof_error: false,
                discarded: 1,
            },
        ];
        for case in cases {
            let mut codec = MllpCodec::new(1024);
            let (frames, err) = decode_all(&mut codec, &case.chunks);
            assert_eq!(frames, case.frames, "{}", case.name);
            assert_eq!(err.is_some(), case.eof_error, "{}: {err:?}", case.name);
            assert_eq!(codec.discarded_bytes(), case.discarded, "{}", case.name);
        }
    }

    #[test]
    fn oversized_frame_yields_its_head_then_resumes_after_it() {
        let mut codec = MllpCodec::new(10);
        let (frames, err) = decode_all(
            &mut codec,
            &[b"\x0bMSH|0123456789", b"abcdef\x1c\x0d", b"\x0bok\x1c\x0d"],
        );
        assert!(err.is_none());
        assert_eq!(frames.len(), 2);
        match &frames[0] {
            Frame::Oversized {
                head,
                max_frame_bytes,
            } => {
                assert!(head.starts_with(b"MSH|"));
                assert_eq!(*max_frame_bytes, 10);
            }
            other => panic!("expected oversized, got {other:?}"),
        }
        assert_eq!(frames[1], msg(b"ok"));
    }

    #[test]
    fn frame_exactly_at_the_limit_is_accepted() {
        let mut codec = MllpCodec::new(3);
        let (frames, _) = decode_all(&mut codec, &[b"\x0babc\x1c\x0d"]);
        assert_eq!(frames, vec![msg(b"abc")]);
    }

    #[test]
    fn trickled_bytes_form_one_frame() {
        let wire = frame(b"MSH|^~\\&|A\rPID|1\r");
        let chunks: Vec<&[u8]> = wire.chunks(1).collect();
        let mut codec = MllpCodec::new(1 << 20);
        let (frames, err) = decode_all(&mut codec, &chunks);
        assert!(err.is_none());
        assert_eq!(frames, vec![msg(b"MSH|^~\\&|A\rPID|1\r")]);
    }

    #[test]
    fn encoder_wraps_payload() {
        let mut codec = MllpCodec::new(10);
        let mut dst = BytesMut::new();
        codec.encode(b"msg", &mut dst).unwrap();
        assert_eq!(&dst[..], b"\x0bmsg\x1c\x0d");
    }

    /// The framing vectors of Google's MLLP adapter (`../shared/corpus/mllp/`), read in place.
    #[test]
    fn google_framing_vectors() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../shared/corpus/mllp/framing_vectors_google.json"
        );
        let Some(text) = crate::testing::corpus_file(path) else {
            return;
        };
        let doc: serde_json::Value = serde_json::from_str(&text).unwrap();
        let hex = |v: &serde_json::Value| -> Vec<u8> {
            let s = v.as_str().unwrap();
            (0..s.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
                .collect()
        };
        let mut checked = 0;
        for case in doc["ok"].as_array().unwrap() {
            let wire = hex(&case["wire"]);
            let payload = hex(&case["payload"]);
            let mut codec = MllpCodec::new(1 << 20);
            let (frames, err) = decode_all(&mut codec, &[&wire]);
            assert!(err.is_none(), "{}", case["name"]);
            assert_eq!(frames, vec![msg(&payload)], "{}", case["name"]);
            assert_eq!(frame(&payload), wire, "{}", case["name"]);
            checked += 1;
        }
        for case in doc["stream"].as_array().unwrap() {
            let wire = hex(&case["wire"]);
            let expected: Vec<Frame> = case["payloads"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| msg(&hex(p)))
                .collect();
            let mut codec = MllpCodec::new(1 << 20);
            let (frames, err) = decode_all(&mut codec, &[&wire]);
            assert!(err.is_none(), "{}", case["name"]);
            assert_eq!(frames, expected, "{}", case["name"]);
            checked += 1;
        }
        for case in doc["error"].as_array().unwrap() {
            // "Rejecting" here means: no message comes out of it. Garbage without a start block is
            // dropped (and counted); an unfinished frame is an error at EOF.
            let wire = hex(&case["wire"]);
            let mut codec = MllpCodec::new(1 << 20);
            let (frames, _err) = decode_all(&mut codec, &[&wire]);
            assert!(frames.is_empty(), "{} produced {frames:?}", case["name"]);
            assert_eq!(
                codec.discarded_bytes(),
                wire.len() as u64,
                "{}",
                case["name"]
            );
            checked += 1;
        }
        assert_eq!(checked, 9);
    }
}
