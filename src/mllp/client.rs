//! A minimal MLLP client: send a message, wait for the answer frame. Used by `ferry send`, the load
//! generator and the tests, so they all speak exactly the protocol the listener does.

use std::time::Duration;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use tokio::net::{TcpStream, ToSocketAddrs};
use tokio_util::codec::Framed;

use super::codec::{Frame, MllpCodec, MllpError};

/// Largest answer the client accepts.
const MAX_REPLY_BYTES: usize = 16 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot connect: {0}")]
    Connect(std::io::Error),
    #[error("{0}")]
    Mllp(#[from] MllpError),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("the receiver closed the connection without answering")]
    Closed,
    #[error("the answer was larger than {MAX_REPLY_BYTES} bytes")]
    Oversized,
}

/// One MLLP connection.
pub struct MllpClient {
    framed: Framed<TcpStream, MllpCodec>,
    timeout: Duration,
}

impl MllpClient {
    pub async fn connect(addr: impl ToSocketAddrs, timeout: Duration) -> Result<Self, ClientError> {
        let stream = tokio::time::timeout(timeout, TcpStream::connect(addr))
            .await
            .map_err(|_| ClientError::Timeout(timeout))?
            .map_err(ClientError::Connect)?;
        let _ = stream.set_nodelay(true);
        Ok(Self {
            framed: Framed::new(stream, MllpCodec::new(MAX_REPLY_BYTES)),
            timeout,
        })
    }

    /// Sends one framed message without waiting.
    pub async fn send(&mut self, payload: &[u8]) -> Result<(), ClientError> {
        self.framed.send(payload).await?;
        Ok(())
    }

    /// Waits for the next answer frame.
    pub async fn receive(&mut self) -> Result<Bytes, ClientError> {
        match tokio::time::timeout(self.timeout, self.framed.next()).await {
            Err(_) => Err(ClientError::Timeout(self.timeout)),
            Ok(None) => Err(ClientError::Closed),
            Ok(Some(Err(e))) => Err(e.into()),
            Ok(Some(Ok(Frame::Message(bytes)))) => Ok(bytes),
            Ok(Some(Ok(Frame::Oversized { .. }))) => Err(ClientError::Oversized),
        }
    }

    /// Sends a message and waits for its answer.
    pub async fn request(&mut self, payload: &[u8]) -> Result<Bytes, ClientError> {
        self.send(payload).await?;
        self.receive().await
    }

    /// Writes raw bytes as they are (no framing): for tests of framing errors.
    pub async fn send_raw(&mut self, bytes: &[u8]) -> Result<(), ClientError> {
        use tokio::io::AsyncWriteExt;
        let stream = self.framed.get_mut();
        stream.write_all(bytes).await.map_err(MllpError::Io)?;
        stream.flush().await.map_err(MllpError::Io)?;
        Ok(())
    }
}

/// Splits a file's bytes into messages: one per `MSH` segment, dropping batch envelopes
/// (FHS/BHS/BTS/FTS), blank lines and a UTF-8 byte-order mark; segments are re-joined with `\r`.
/// Works on bytes so that files in any ASCII-compatible character set are sent exactly as written.
pub fn split_messages(data: &[u8]) -> Vec<Vec<u8>> {
    let data = data.strip_prefix(b"\xef\xbb\xbf").unwrap_or(data);
    let mut messages = Vec::new();
    let mut current: Option<Vec<u8>> = None;
    for line in data.split(|b| *b == b'\r' || *b == b'\n') {
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let id = line.get(..3).unwrap_or(b"");
        if matches!(id, b"FHS" | b"BHS" | b"BTS" | b"FTS") {
            continue;
        }
        if id == b"MSH" {
            if let Some(m) = current.take() {
                messages.push(m);
            }
            current = Some(Vec::new());
        }
        if let Some(m) = current.as_mut() {
            m.extend_from_slice(line);
            m.push(b'\r');
        }
    }
    if let Some(m) = current {
        messages.push(m);
    }
    messages
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_batches_and_line_endings() {
        let text =
            "\u{feff}FHS|^~\\&\nBHS|^~\\&\nMSH|^~\\&|A\nPID|1\r\n\r\nMSH|^~\\&|B\rBTS|2\nFTS|1\n";
        assert_eq!(
            split_messages(text.as_bytes()),
            vec![b"MSH|^~\\&|A\rPID|1\r".to_vec(), b"MSH|^~\\&|B\r".to_vec()]
        );
        assert!(split_messages(b"no message here").is_empty());
        // Non-UTF-8 bytes pass through untouched.
        assert_eq!(
            split_messages(b"MSH|^~\\&|M\xfcller\n"),
            vec![b"MSH|^~\\&|M\xfcller\r".to_vec()]
        );
    }
}
