//! The zero-copy reader [`super::check_sync_message`] walks a message with.

use super::{too_many, Result, SyncCheckError};

/// A zero-copy reader over untrusted bytes; every read checks the bytes are there.
#[derive(Clone, Copy)]
pub(super) struct Cursor<'a> {
    bytes: &'a [u8],
    /// Bytes read so far.
    pub(super) pos: usize,
}

impl<'a> Cursor<'a> {
    pub(super) fn new(bytes: &'a [u8]) -> Self {
        Cursor { bytes, pos: 0 }
    }

    pub(super) fn is_empty(&self) -> bool {
        self.pos == self.bytes.len()
    }

    pub(super) fn remaining(&self) -> u64 {
        (self.bytes.len() - self.pos) as u64
    }

    pub(super) fn trailing(&self, field: &'static str) -> SyncCheckError {
        SyncCheckError::TrailingBytes {
            field,
            count: self.remaining(),
        }
    }

    pub(super) fn take(&mut self, n: u64, field: &'static str) -> Result<&'a [u8]> {
        if n > self.remaining() {
            return Err(SyncCheckError::Truncated { field });
        }
        let start = self.pos;
        self.pos += n as usize;
        Ok(&self.bytes[start..self.pos])
    }

    pub(super) fn byte(&mut self, field: &'static str) -> Result<u8> {
        Ok(self.take(1, field)?[0])
    }

    /// A uLEB length, then that many bytes.
    pub(super) fn prefixed(&mut self, field: &'static str) -> Result<&'a [u8]> {
        let n = self.uleb(field)?;
        self.take(n, field)
    }

    /// A uLEB count checked against `limit`, and against the bytes left when each item
    /// takes at least `min_bytes`, before anyone loops over it.
    pub(super) fn count(&mut self, field: &'static str, limit: u64, min_bytes: u64) -> Result<u64> {
        let n = self.uleb(field)?;
        if n > limit {
            return Err(too_many(field, n, limit));
        }
        if n.saturating_mul(min_bytes) > self.remaining() {
            return Err(SyncCheckError::Truncated { field });
        }
        Ok(n)
    }

    /// Unsigned LEB128 as automerge reads it (`parse/leb128.rs`): at most 64 bits, no
    /// redundant trailing zero byte.
    pub(super) fn uleb(&mut self, field: &'static str) -> Result<u64> {
        let mut value = 0_u64;
        for i in 0..10 {
            let byte = self.byte(field)?;
            if i == 9 && byte > 1 {
                break;
            }
            value |= u64::from(byte & 0x7f) << (7 * i);
            if byte & 0x80 == 0 {
                return match i > 0 && byte == 0 {
                    true => break,
                    false => Ok(value),
                };
            }
        }
        Err(SyncCheckError::BadNumber { field })
    }

    pub(super) fn uleb_u32(&mut self, field: &'static str) -> Result<u32> {
        u32::try_from(self.uleb(field)?).map_err(|_| SyncCheckError::BadNumber { field })
    }

    /// Signed LEB128, at most ten bytes.
    pub(super) fn sleb(&mut self, field: &'static str) -> Result<i64> {
        let mut value = 0_i64;
        for i in 0..10 {
            let byte = self.byte(field)?;
            value |= i64::from(byte & 0x7f) << (7 * i);
            if byte & 0x80 == 0 {
                if i < 9 && byte & 0x40 != 0 {
                    value |= -1_i64 << (7 * (i + 1));
                }
                return Ok(value);
            }
        }
        Err(SyncCheckError::BadNumber { field })
    }

    /// Skips one LEB128 number of either sign.
    pub(super) fn skip_leb(&mut self, field: &'static str) -> Result<()> {
        for _ in 0..10 {
            if self.byte(field)? & 0x80 == 0 {
                return Ok(());
            }
        }
        Err(SyncCheckError::BadNumber { field })
    }
}
