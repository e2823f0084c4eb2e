//! The http source: a JSON array or NDJSON document fetched from a URL and cut into chunks
//! while it streams in, so the fetcher sends the first chunks before the download ends. A
//! chunk stays in memory until it is saved (for re-sends), and the download waits while too
//! many are; a broken download starts again and skips the chunks it already made.

use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc;

/// What the download task tells the fetcher.
pub enum Piece {
    Chunk(Bytes),
    /// The document ended; it held this many objects.
    End(u64),
    Failed(String),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Array,
    Lines,
    Done,
}

/// Splits a byte stream into its top-level JSON values: the elements of an array, or the
/// lines of NDJSON (told apart by the first non-blank byte).
#[derive(Default)]
pub struct Splitter {
    mode: Option<Mode>,
    depth: u32,
    in_str: bool,
    escaped: bool,
    current: Vec<u8>,
    /// Objects emitted so far, to name a bad one.
    emitted: u64,
}

/// No chunk can hold a larger object (NATS's default max_payload is 1 MiB).
const MAX_OBJECT: usize = 1 << 20;

impl Splitter {
    pub fn push(&mut self, bytes: &[u8], out: &mut Vec<Vec<u8>>) -> Result<(), String> {
        for &b in bytes {
            if self.current.len() > MAX_OBJECT {
                return Err(format!(
                    "object #{} is over {MAX_OBJECT} bytes: no chunk can carry it (is the document a JSON array or NDJSON?)",
                    self.emitted
                ));
            }
            match self.mode {
                // A byte-order mark some editors write: not part of the JSON.
                None if self.current.is_empty() && [0xEF, 0xBB, 0xBF].contains(&b) => {}
                None if b.is_ascii_whitespace() => {}
                None if b == b'[' => self.mode = Some(Mode::Array),
                None => {
                    self.mode = Some(Mode::Lines);
                    self.lines_byte(b, out)?;
                }
                Some(Mode::Lines) => self.lines_byte(b, out)?,
                Some(Mode::Array) => self.array_byte(b, out)?,
                Some(Mode::Done) if b.is_ascii_whitespace() => {}
                Some(Mode::Done) => return Err("data after the end of the JSON array".into()),
            }
        }
        Ok(())
    }

    pub fn finish(&mut self, out: &mut Vec<Vec<u8>>) -> Result<(), String> {
        match self.mode {
            Some(Mode::Array) => {
                Err("the JSON array is not closed: the document was cut short".into())
            }
            _ => self.emit(out),
        }
    }

    fn lines_byte(&mut self, b: u8, out: &mut Vec<Vec<u8>>) -> Result<(), String> {
        if b == b'\n' {
            self.emit(out)?;
        } else {
            self.current.push(b);
        }
        Ok(())
    }

    fn array_byte(&mut self, b: u8, out: &mut Vec<Vec<u8>>) -> Result<(), String> {
        if self.in_str {
            self.current.push(b);
            match (self.escaped, b) {
                (true, _) => self.escaped = false,
                (false, b'\\') => self.escaped = true,
                (false, b'"') => self.in_str = false,
                _ => {}
            }
            return Ok(());
        }
        match b {
            b',' if self.depth == 0 => self.emit(out)?,
            b']' if self.depth == 0 => {
                self.emit(out)?;
                self.mode = Some(Mode::Done);
            }
            _ => {
                match b {
                    b'"' => self.in_str = true,
                    b'{' | b'[' => self.depth += 1,
                    b'}' | b']' => {
                        self.depth = self
                            .depth
                            .checked_sub(1)
                            .ok_or("unbalanced brackets in the JSON array")?
                    }
                    _ => {}
                }
                if !(self.current.is_empty() && b.is_ascii_whitespace()) {
                    self.current.push(b);
                }
            }
        }
        Ok(())
    }

    /// A chunk with one bad object could never be saved (each re-send dead-lettered): the
    /// source is refused instead, naming the object.
    fn emit(&mut self, out: &mut Vec<Vec<u8>>) -> Result<(), String> {
        let v = std::mem::take(&mut self.current);
        let trimmed = v.trim_ascii();
        if trimmed.is_empty() {
            return Ok(());
        }
        if let Err(e) = serde_json::from_slice::<serde::de::IgnoredAny>(trimmed) {
            return Err(format!(
                "object #{} is not JSON ({e}): the source must be a JSON array or NDJSON, one object per line",
                self.emitted
            ));
        }
        self.emitted += 1;
        out.push(trimmed.to_vec());
        Ok(())
    }
}

/// Builds chunk payloads `{"index": N, "data": [...]}` from objects.
struct Chunker {
    size: usize,
    next_index: u64,
    objects: Vec<Vec<u8>>,
}

impl Chunker {
    fn take(&mut self, force: bool) -> Option<Bytes> {
        if self.objects.is_empty() || (!force && self.objects.len() < self.size) {
            return None;
        }
        let objs: Vec<Vec<u8>> = self
            .objects
            .drain(..self.objects.len().min(self.size))
            .collect();
        let mut p = format!("{{\"index\":{},\"data\":[", self.next_index).into_bytes();
        for (i, o) in objs.iter().enumerate() {
            if i > 0 {
                p.push(b',');
            }
            p.extend_from_slice(o);
        }
        p.extend_from_slice(b"]}");
        self.next_index += 1;
        Some(Bytes::from(p))
    }
}

/// Downloads `url` and sends its chunks in order; retries a broken download with backoff.
pub async fn download(url: String, chunk_size: u64, tx: mpsc::Sender<Piece>) {
    let http = match reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            let _ = tx
                .send(Piece::Failed(format!("cannot make an HTTP client: {e}")))
                .await;
            return;
        }
    };
    let mut sent = 0u64;
    for attempt in 1usize.. {
        match fetch(&http, &url, chunk_size, sent, &tx).await {
            Ok(objects) => {
                let _ = tx.send(Piece::End(objects)).await;
                return;
            }
            Err(Failure::Document(e)) => {
                // The same bytes would fail the same way: no retry.
                let _ = tx
                    .send(Piece::Failed(format!("the source is malformed: {e}")))
                    .await;
                return;
            }
            Err(Failure::Transfer(made, e)) => {
                sent = sent.max(made);
                if attempt >= 10 {
                    let _ = tx
                        .send(Piece::Failed(format!("cannot download the source: {e}")))
                        .await;
                    return;
                }
                let wait = crate::nats::backoff(attempt + 3);
                tracing::warn!(
                    "source download failed ({e}); retrying in {wait:?} from chunk #{sent}"
                );
                tokio::time::sleep(wait).await;
            }
        }
    }
}

enum Failure {
    /// The download broke after this many chunks: worth another try.
    Transfer(u64, String),
    /// The document itself is not a JSON array or NDJSON.
    Document(String),
}

/// One download; chunks before `skip` were sent by an earlier attempt. Returns the object
/// count.
async fn fetch(
    http: &reqwest::Client,
    url: &str,
    chunk_size: u64,
    skip: u64,
    tx: &mpsc::Sender<Piece>,
) -> Result<u64, Failure> {
    let mut resp = http
        .get(url)
        .send()
        .await
        .map_err(|e| Failure::Transfer(skip, e.without_url().to_string()))?;
    if !resp.status().is_success() {
        return Err(Failure::Transfer(skip, format!("HTTP {}", resp.status())));
    }
    let mut splitter = Splitter::default();
    let mut chunker = Chunker {
        size: chunk_size as usize,
        next_index: 0,
        objects: Vec::new(),
    };
    let mut objects = 0u64;
    let mut found = Vec::new();
    loop {
        let piece = resp.chunk().await.map_err(|e| {
            Failure::Transfer(chunker.next_index.max(skip), e.without_url().to_string())
        })?;
        let end = piece.is_none();
        match &piece {
            Some(bytes) => splitter.push(bytes, &mut found),
            None => splitter.finish(&mut found),
        }
        .map_err(|e| match piece {
            // Cut short: the connection broke mid-document.
            None if e.contains("not closed") => Failure::Transfer(chunker.next_index.max(skip), e),
            _ => Failure::Document(e),
        })?;
        objects += found.len() as u64;
        chunker.objects.append(&mut found);
        while let Some(chunk) = chunker.take(end) {
            if chunker.next_index > skip && tx.send(Piece::Chunk(chunk)).await.is_err() {
                return Ok(objects);
            }
        }
        if end {
            return Ok(objects);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(parts: &[&str]) -> Result<Vec<String>, String> {
        let mut s = Splitter::default();
        let mut out = Vec::new();
        for p in parts {
            s.push(p.as_bytes(), &mut out)?;
        }
        s.finish(&mut out)?;
        Ok(out
            .into_iter()
            .map(|v| String::from_utf8(v).unwrap())
            .collect())
    }

    #[test]
    fn splits_a_json_array_across_any_boundary() {
        let doc = r#" [ {"a": "x,]}"}, [1, 2], "s\"]", 3 ] "#;
        let want = vec![r#"{"a": "x,]}"}"#, "[1, 2]", r#""s\"]""#, "3"];
        assert_eq!(split(&[doc]).unwrap(), want);
        for cut in 0..doc.len() {
            assert_eq!(
                split(&[&doc[..cut], &doc[cut..]]).unwrap(),
                want,
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn splits_ndjson() {
        assert_eq!(
            split(&["{\"a\":1}\n\n{\"b\"", ":2}\r\n{\"c\":3}"]).unwrap(),
            vec!["{\"a\":1}", "{\"b\":2}", "{\"c\":3}"]
        );
    }

    #[test]
    fn a_bad_object_refuses_the_source_naming_it() {
        let e = split(&["{\"a\":1}\n{\"b\":\n"]).unwrap_err();
        assert!(e.starts_with("object #1 is not JSON"), "{e}");
        let e = split(&["[1, {x}, 3]"]).unwrap_err();
        assert!(e.starts_with("object #1 is not JSON"), "{e}");
        // A pretty-printed object is not NDJSON: its first line is `{`.
        let e = split(&["{\n  \"items\": [1]\n}\n"]).unwrap_err();
        assert!(e.starts_with("object #0 is not JSON"), "{e}");
        let huge = format!("[\"{}\"]", "x".repeat(MAX_OBJECT + 1));
        assert!(split(&[&huge])
            .unwrap_err()
            .contains("no chunk can carry it"));
    }

    #[test]
    fn a_byte_order_mark_is_skipped() {
        assert_eq!(split(&["\u{feff}[1, 2]"]).unwrap(), vec!["1", "2"]);
        assert_eq!(split(&["\u{feff}{\"a\":1}\n"]).unwrap(), vec!["{\"a\":1}"]);
    }

    #[test]
    fn a_cut_array_is_an_error() {
        assert!(split(&["[{\"a\":1},"]).unwrap_err().contains("not closed"));
        assert!(split(&["[1] 2"]).unwrap_err().contains("after the end"));
    }

    #[test]
    fn chunks_are_app9_shaped() {
        let mut c = Chunker {
            size: 2,
            next_index: 0,
            objects: vec![b"1".to_vec(), b"2".to_vec(), b"3".to_vec()],
        };
        assert_eq!(
            c.take(false).unwrap(),
            Bytes::from_static(br#"{"index":0,"data":[1,2]}"#)
        );
        assert!(c.take(false).is_none());
        assert_eq!(
            c.take(true).unwrap(),
            Bytes::from_static(br#"{"index":1,"data":[3]}"#)
        );
    }
}
