//! Reads a snapshot file in chunks and frames one JSON value at a time, so each entry is
//! parsed by `serde_json` from a byte slice (much faster than its per-byte reader) while
//! memory stays bounded by one chunk plus the largest entry.
//!
//! The framer only finds where a value ends (brackets and strings); `serde_json` then
//! validates every byte of it. A value whose brackets the framer mismatched is therefore
//! still rejected, because `serde_json` sees it as invalid.

use std::io::{self, Read};

use serde::de::DeserializeOwned;

use crate::fast::Fast;

/// Bytes read from the file per refill.
const CHUNK_BYTES: usize = 256 * 1024;

/// The longest entry the fast path reads (see [`Scanner::fast_entry`]); a quarter of the
/// buffer, so the bytes kept at a refill never fill it.
const FAST_MAX_BYTES: usize = CHUNK_BYTES / 4;

/// The largest single value (an entry, or a top-level field) a restore buffers, unless
/// the file size limit is smaller: a larger one is refused with a typed error rather than
/// letting one malformed or hostile value make the buffer as large as the file.
pub(crate) const MAX_VALUE_BYTES: usize = 256 << 20;

/// A problem found while reading, with its absolute position.
#[derive(Debug)]
pub(crate) enum ScanError {
    Io(io::Error),
    Syntax {
        reason: String,
        line: usize,
        column: usize,
        truncated: bool,
    },
    /// A single value is larger than the scanner's limit.
    ValueTooLarge {
        limit: u64,
        line: usize,
        column: usize,
    },
}

/// What the fast path made of the next value.
pub(crate) enum Streamed<T> {
    Value(T),
    /// Not parsed for a reason the caller must examine on the framed value (it does not
    /// fit the type, or the file ends inside it).
    Reframe,
    /// A syntax error inside the buffer: the file is broken right here.
    Syntax,
    /// Parsed, but its bytes are not valid JSON text (see [`text_problem`]): the value,
    /// to name it in the error, and the error.
    Invalid(T, ScanError),
}

/// Whether `error` is `serde_json` refusing valid JSON it cannot hold: a number beyond
/// `f64`, or nesting deeper than its recursion limit. Both are the reader's limits, not
/// faults of the file (`serde_json` classifies them as syntax errors).
pub(crate) fn beyond_reader(error: &serde_json::Error) -> bool {
    if error.classify() != serde_json::error::Category::Syntax {
        return false;
    }
    let message = error.to_string();
    message.starts_with("number out of range") || message.starts_with("recursion limit exceeded")
}

/// The first byte of `bytes` (a value `serde_json` parsed) that makes it invalid JSON
/// text although the parse succeeded, with what is wrong there.
///
/// `serde_json` does not validate what it skips (unknown fields, and whatever a value's
/// type ignores): invalid UTF-8 and unpaired surrogate escapes pass there. Every parsed
/// value is checked here, so a file that is not JSON is refused wherever the bytes sit.
/// `str::from_utf8` is fast, and escapes are looked at only if there is a backslash.
pub(crate) fn text_problem(bytes: &[u8]) -> Option<(usize, &'static str)> {
    if let Err(error) = std::str::from_utf8(bytes) {
        return Some((error.valid_up_to(), "invalid UTF-8"));
    }
    if !bytes.contains(&b'\\') {
        return None;
    }
    let hex = |at: usize| -> Option<u16> {
        let digits = bytes.get(at..at + 4)?;
        u16::from_str_radix(std::str::from_utf8(digits).ok()?, 16).ok()
    };
    let mut index = 0;
    while index < bytes.len() {
        if bytes[index] != b'\\' {
            index += 1;
            continue;
        }
        // A backslash in a value `serde_json` accepted starts a valid escape.
        if bytes.get(index + 1) != Some(&b'u') {
            index += 2;
            continue;
        }
        let Some(unit) = hex(index + 2) else {
            return Some((index, "invalid escape"));
        };
        match unit {
            0xD800..=0xDBFF => {
                let trailing = (bytes.get(index + 6..index + 8) == Some(b"\\u"))
                    .then(|| hex(index + 8))
                    .flatten();
                if !matches!(trailing, Some(0xDC00..=0xDFFF)) {
                    return Some((index, "lone leading surrogate in hex escape"));
                }
                index += 12;
            }
            0xDC00..=0xDFFF => return Some((index, "lone trailing surrogate in hex escape")),
            _ => index += 6,
        }
    }
    None
}

/// How close to the end of the buffered bytes a syntax error must be to be taken for a
/// value cut short by the buffer (a number needs a byte or two of look-ahead).
const NEAR_THE_END: usize = 8;

/// The offset in `bytes` of the position `error` reports (its line and byte column).
fn error_offset(bytes: &[u8], error: &serde_json::Error) -> usize {
    let line_start = if error.line() <= 1 {
        0
    } else {
        bytes
            .iter()
            .enumerate()
            .filter(|&(_, &byte)| byte == b'\n')
            .nth(error.line() - 2)
            .map_or(bytes.len(), |(at, _)| at + 1)
    };
    (line_start + error.column().saturating_sub(1)).min(bytes.len())
}

/// A chunked window over the file.
pub(crate) struct Scanner<R> {
    reader: R,
    /// Always fully initialised; `buffer[..filled]` holds file bytes.
    buffer: Vec<u8>,
    filled: usize,
    /// Index in `buffer` of the next unread byte.
    position: usize,
    /// Absolute file offset of `buffer[0]`.
    buffer_offset: u64,
    /// Line number (1-based) of `buffer[0]`, and the absolute offset where that line starts.
    buffer_line: usize,
    line_start: u64,
    at_eof: bool,
    /// See [`MAX_VALUE_BYTES`].
    max_value_bytes: usize,
}

impl<R: Read> Scanner<R> {
    pub(crate) fn new(reader: R) -> Self {
        Self {
            reader,
            buffer: vec![0; CHUNK_BYTES],
            filled: 0,
            position: 0,
            buffer_offset: 0,
            buffer_line: 1,
            line_start: 0,
            at_eof: false,
            max_value_bytes: MAX_VALUE_BYTES,
        }
    }

    /// Refuses values larger than `bytes` (default [`MAX_VALUE_BYTES`]).
    pub(crate) fn with_max_value_bytes(mut self, bytes: usize) -> Self {
        self.max_value_bytes = bytes.max(1);
        self
    }

    /// Absolute offset of the next unread byte.
    pub(crate) fn offset(&self) -> u64 {
        self.buffer_offset + self.position as u64
    }

    /// Drops consumed bytes and reads another chunk; `Ok(false)` at end of file.
    fn refill(&mut self) -> Result<bool, ScanError> {
        if self.at_eof {
            return Ok(false);
        }
        if self.position > 0 {
            let dropped = &self.buffer[..self.position];
            // `contains` is a fast `memchr`; compact files have no newlines, so the slower
            // counting rarely runs.
            if dropped.contains(&b'\n') {
                #[allow(
                    clippy::naive_bytecount,
                    reason = "only for files with newlines; not worth a dependency"
                )]
                let newlines = dropped.iter().filter(|&&byte| byte == b'\n').count();
                self.buffer_line += newlines;
                let last = dropped.iter().rposition(|&byte| byte == b'\n').unwrap_or(0);
                self.line_start = self.buffer_offset + last as u64 + 1;
            }
            self.buffer_offset += self.position as u64;
            self.buffer.copy_within(self.position..self.filled, 0);
            self.filled -= self.position;
            self.position = 0;
        }
        if self.filled == self.buffer.len() {
            // One value is larger than the buffer: grow it, up to the limit.
            if self.filled >= self.max_value_bytes {
                let (line, column) = self.line_column(0);
                return Err(ScanError::ValueTooLarge {
                    limit: self.max_value_bytes as u64,
                    line,
                    column,
                });
            }
            let grown = (self.buffer.len() * 2).min(self.max_value_bytes.max(self.filled + 1));
            self.buffer.resize(grown, 0);
        }
        let read = loop {
            match self.reader.read(&mut self.buffer[self.filled..]) {
                Ok(read) => break read,
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(error) => return Err(ScanError::Io(error)),
            }
        };
        self.filled += read;
        if read == 0 {
            self.at_eof = true;
        }
        Ok(read > 0)
    }

    /// Line and column (1-based, columns in bytes) of buffer index `index`.
    fn line_column(&self, index: usize) -> (usize, usize) {
        let mut line = self.buffer_line;
        let mut line_start = self.line_start;
        for (at, byte) in self.buffer[..index].iter().enumerate() {
            if *byte == b'\n' {
                line += 1;
                line_start = self.buffer_offset + at as u64 + 1;
            }
        }
        let offset = self.buffer_offset + index as u64;
        let column = usize::try_from(offset - line_start).unwrap_or(usize::MAX);
        (line, column.saturating_add(1))
    }

    /// A syntax error at buffer index `index`.
    fn error_at(&self, index: usize, reason: &str, truncated: bool) -> ScanError {
        let (line, column) = self.line_column(index);
        ScanError::Syntax {
            reason: format!("{reason} at line {line} column {column}"),
            line,
            column,
            truncated,
        }
    }

    /// A syntax error at the next unread byte.
    pub(crate) fn error_here(&self, reason: &str) -> ScanError {
        self.error_at(self.position, reason, false)
    }

    /// The error for a file that ends where `expected` was due.
    pub(crate) fn eof_error(&self, expected: &str) -> ScanError {
        self.error_at(
            self.filled,
            &format!("EOF while expecting {expected}"),
            true,
        )
    }

    /// Skips whitespace and returns the next byte without consuming it (`None` at EOF).
    pub(crate) fn peek(&mut self) -> Result<Option<u8>, ScanError> {
        loop {
            while let Some(&byte) = self.buffer[..self.filled].get(self.position) {
                if matches!(byte, b' ' | b'\n' | b'\t' | b'\r') {
                    self.position += 1;
                } else {
                    return Ok(Some(byte));
                }
            }
            if !self.refill()? {
                return Ok(None);
            }
        }
    }

    /// Consumes the next non-whitespace byte, which must be one of `expected`.
    pub(crate) fn expect(&mut self, expected: &[u8], description: &str) -> Result<u8, ScanError> {
        match self.peek()? {
            Some(byte) if expected.contains(&byte) => {
                self.position += 1;
                Ok(byte)
            }
            Some(_) => Err(self.error_at(self.position, &format!("expected {description}"), false)),
            None => Err(self.eof_error(description)),
        }
    }

    /// Frames the next JSON value (after whitespace) and hands its bytes to `parse`, with
    /// a function that converts a `serde_json` error in those bytes to an absolute one.
    pub(crate) fn next_value<T>(
        &mut self,
        parse: impl FnOnce(&[u8]) -> Result<T, serde_json::Error>,
    ) -> Result<T, ScanError> {
        if self.peek()?.is_none() {
            return Err(self.eof_error("a value"));
        }
        let length = self.value_length()?;
        let start = self.position;
        let bytes = &self.buffer[start..start + length];
        match parse(bytes) {
            Ok(value) => {
                if let Some((at, reason)) = text_problem(bytes) {
                    return Err(self.error_at(start + at, reason, false));
                }
                self.position += length;
                Ok(value)
            }
            Err(error) => {
                let mut relocated = self.relocate(start, &error);
                // The framed value ended early, but the file did not: that is a broken
                // value, not a torn file.
                if let ScanError::Syntax { truncated, .. } = &mut relocated {
                    *truncated &= self.at_eof && start + length == self.filled;
                }
                Err(relocated)
            }
        }
    }

    /// Runs the fast path's `scan` on the bytes from the next value on (after whitespace),
    /// reading more while the entry runs past them; `Ok(None)` when the strict path must
    /// read the entry instead (nothing was consumed then).
    ///
    /// It reads on only while the entry is shorter than [`FAST_MAX_BYTES`], which is far
    /// below the buffer's size: so the buffer never grows for the fast path, and a long
    /// entry, the end of the file and every limit are the strict path's to handle.
    pub(crate) fn fast_entry<T>(
        &mut self,
        mut scan: impl FnMut(&[u8]) -> Fast<T>,
    ) -> Result<Option<T>, ScanError> {
        loop {
            if self.peek()?.is_none() {
                return Ok(None);
            }
            match scan(&self.buffer[self.position..self.filled]) {
                Fast::Done(value, length) => {
                    self.position += length;
                    return Ok(Some(value));
                }
                Fast::NeedMore if !self.at_eof && self.filled - self.position < FAST_MAX_BYTES => {
                    self.refill()?;
                }
                Fast::NeedMore | Fast::Fallback => return Ok(None),
            }
        }
    }

    /// Parses what the buffer holds from the next value on, which must fail inside the
    /// buffer (after [`Streamed::Syntax`]), and returns that error at its place in the
    /// file; the parse gives the caller a chance to record which entry it was in.
    pub(crate) fn error_in_place<T>(
        &self,
        parse: impl FnOnce(&[u8]) -> Result<T, serde_json::Error>,
    ) -> Option<ScanError> {
        let start = self.position;
        parse(&self.buffer[start..self.filled])
            .err()
            .map(|error| self.relocate(start, &error))
    }

    /// Parses the next value straight from the buffer with `serde_json`'s stream
    /// deserializer, refilling when the value runs past the buffer's end.
    ///
    /// A syntax error is [`Streamed::Syntax`] (see [`error_in_place`](Self::error_in_place));
    /// any other failure is [`Streamed::Reframe`]: the caller then uses
    /// [`next_value`](Self::next_value), which reports the error precisely.
    pub(crate) fn next_streamed<T: DeserializeOwned>(&mut self) -> Result<Streamed<T>, ScanError> {
        loop {
            if self.peek()?.is_none() {
                return Ok(Streamed::Reframe);
            }
            let outcome = {
                let window = &self.buffer[self.position..self.filled];
                let mut stream = serde_json::Deserializer::from_slice(window).into_iter::<T>();
                match stream.next() {
                    Some(Ok(value)) => Ok((value, stream.byte_offset())),
                    // Valid JSON that `serde_json` cannot hold is the reader's limit, which
                    // the caller tells from a broken file on the framed value.
                    Some(Err(error)) if beyond_reader(&error) => {
                        Err(serde_json::error::Category::Data)
                    }
                    // When it skips a value (`IgnoredAny`, `RawValue`), `serde_json` calls
                    // a number cut short by the end of the window invalid, not the end of
                    // the input: near the end of the window, read on and parse again.
                    Some(Err(error))
                        if error.classify() == serde_json::error::Category::Syntax
                            && !self.at_eof
                            && error_offset(window, &error) + NEAR_THE_END >= window.len() =>
                    {
                        Err(serde_json::error::Category::Eof)
                    }
                    Some(Err(error)) => Err(error.classify()),
                    None => Err(serde_json::error::Category::Eof),
                }
            };
            match outcome {
                Ok((value, length)) => {
                    let start = self.position;
                    if let Some((at, reason)) = text_problem(&self.buffer[start..start + length]) {
                        let error = self.error_at(start + at, reason, false);
                        return Ok(Streamed::Invalid(value, error));
                    }
                    self.position += length;
                    return Ok(Streamed::Value(value));
                }
                Err(serde_json::error::Category::Eof) if !self.at_eof => {
                    self.refill()?;
                }
                Err(serde_json::error::Category::Syntax) => return Ok(Streamed::Syntax),
                Err(_) => return Ok(Streamed::Reframe),
            }
        }
    }

    /// Converts an error `serde_json` reported inside the value at `start` to one that
    /// names the position in the file.
    fn relocate(&self, start: usize, error: &serde_json::Error) -> ScanError {
        let (start_line, start_column) = self.line_column(start);
        let (line, column) = if error.line() <= 1 {
            (start_line, start_column + error.column().saturating_sub(1))
        } else {
            (start_line + error.line() - 1, error.column())
        };
        // serde_json's message ends with its own (relative) position; replace it.
        let message = error.to_string();
        let reason = match message.rfind(" at line ") {
            Some(cut) => &message[..cut],
            None => &message,
        };
        ScanError::Syntax {
            // serde_json quotes the text it refused, which may be megabytes long.
            reason: format!(
                "{} at line {line} column {column}",
                crate::error::shortened(reason)
            ),
            line,
            column,
            truncated: error.is_eof(),
        }
    }

    /// The length of the JSON value starting at `position`, reading more of the file as
    /// needed. Only brackets and string boundaries are tracked.
    fn value_length(&mut self) -> Result<usize, ScanError> {
        let first = self.buffer[self.position];
        let mut scanned = 1;
        let mut depth: usize = usize::from(matches!(first, b'{' | b'['));
        let mut in_string = first == b'"';
        let mut escaped = false;
        let scalar = depth == 0 && !in_string;
        loop {
            let window = &self.buffer[self.position + scanned..self.filled];
            for (index, &byte) in window.iter().enumerate() {
                if in_string {
                    if byte < 0x20 {
                        // JSON strings cannot hold raw control bytes; a sparse hole or
                        // a lost quote must not make the framer read on to the end. The
                        // byte is included, so `serde_json` reports it.
                        return Ok(scanned + index + 1);
                    } else if escaped {
                        escaped = false;
                    } else if byte == b'\\' {
                        escaped = true;
                    } else if byte == b'"' {
                        in_string = false;
                        if depth == 0 {
                            return Ok(scanned + index + 1);
                        }
                    }
                } else if scalar {
                    // Numbers, `true`, `false` and `null` are made of these; anything else
                    // ends the scalar, and `serde_json` judges what it got.
                    if matches!(byte, b',' | b'}' | b']' | b' ' | b'\n' | b'\t' | b'\r') {
                        return Ok(scanned + index);
                    }
                    if !(byte.is_ascii_alphanumeric() || matches!(byte, b'+' | b'-' | b'.')) {
                        return Ok(scanned + index + 1);
                    }
                } else if byte < 0x20 && !matches!(byte, b'\n' | b'\t' | b'\r') {
                    // Not valid JSON outside a string either: let `serde_json` say so here.
                    return Ok(scanned + index + 1);
                } else {
                    match byte {
                        b'"' => in_string = true,
                        b'{' | b'[' => depth += 1,
                        b'}' | b']' => {
                            depth -= 1;
                            if depth == 0 {
                                return Ok(scanned + index + 1);
                            }
                        }
                        _ => {}
                    }
                }
            }
            scanned += window.len();
            let position_before = self.position;
            if !self.refill()? {
                if scalar {
                    // A scalar may end at EOF; what follows decides if the file is whole.
                    return Ok(scanned);
                }
                return Err(self.eof_error("the end of a value"));
            }
            debug_assert!(self.position <= position_before);
        }
    }
}
