//! HL7 v2: bytes to text ([`decode`]), text to a zero-copy message ([`Message::parse`]), escape sequences
//! ([`unescape`], [`escape`]), writing messages back out ([`write_message`]) and the path syntax used everywhere (`PID.3[*].4.1`, [`Path`]).
//!
//! This module knows nothing of sockets, stores, mappings or FHIR: it turns what arrived into something that can
//! be queried, keeping raw and decoded values apart and every value's position, so that callers can validate,
//! map, and point an ERR segment at exactly what was wrong.

pub mod decode;
pub mod escape;
pub mod parse;
pub mod path;
pub mod write;

pub use decode::{Charset, DecodeError, DecodeOptions, Decoded, decode, encode};
pub use escape::{escape, unescape};
pub use parse::{Field, Level, Location, Message, ParseError, Segment, Separators, Split, Value};
pub use path::{Index, Path, PathError};
pub use write::{WriteField, WriteSegment, write_message};
pub mod ack;
