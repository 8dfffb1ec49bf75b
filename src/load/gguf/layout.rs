//! A GGUF file's layout, checked before anything is read by it: the alignment its header declares (a power of
//! two stored as a u32, as llama.cpp requires; candle's parser divides by it) and where each tensor's data lies
//! (aligned, inside the file, overlapping no other tensor's). A file that breaks one of these would otherwise
//! panic the loader or load and answer garbage.

use std::io::{self, Read, Seek};

use candle_core::quantized::gguf_file::{Content, Value};

/// The metadata key that moves tensor data off its default 32-byte alignment.
const ALIGNMENT_KEY: &str = "general.alignment";
/// GGUF's alignment when the header declares none.
const DEFAULT_ALIGNMENT: u64 = 32;
/// GGUF's value type number for u32.
const U32: u32 = 4;
/// GGUF's value type number for arrays.
const ARRAY: u32 = 9;
/// The deepest nesting of arrays the header walk follows (real files nest none; candle's parser allows this).
const MAX_NESTING: usize = 64;

/// Parses a GGUF header from the start of `reader`: its alignment checked first, then candle's parse, then
/// every tensor's place. Errors are one line for "invalid model file".
pub fn read_content<R: Read + Seek>(reader: &mut R) -> Result<Content, String> {
    check_alignment(reader)?;
    reader.rewind().map_err(|e| e.to_string())?;
    let content = Content::read(reader).map_err(|e| match e {
        candle_core::Error::Io(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
            "the file ends inside its GGUF header".to_string()
        }
        e => e.to_string(),
    })?;
    let len = reader
        .seek(io::SeekFrom::End(0))
        .map_err(|e| e.to_string())?;
    check_tensors(&content, len)?;
    Ok(content)
}

/// Refuses a declared alignment that is not a power of two stored as a u32. Reads only the metadata; a header
/// too broken to walk is left for candle's parser to describe.
fn check_alignment<R: Read + Seek>(reader: &mut R) -> Result<(), String> {
    let Ok(Some((kind, value))) = Walker::declared(reader, ALIGNMENT_KEY) else {
        return Ok(());
    };
    if kind != U32 {
        return Err(format!(
            "`{ALIGNMENT_KEY}` has GGUF value type {kind}; it must be a u32 (type {U32})"
        ));
    }
    match value.is_power_of_two() {
        true => Ok(()),
        false => Err(format!(
            "`{ALIGNMENT_KEY}` is {value}, which is not a power of two"
        )),
    }
}

/// A walk over a GGUF header's metadata that reads only what it must: keys, value types and lengths.
struct Walker<'a, R> {
    reader: &'a mut R,
    /// Versions 2 and 3 store counts and lengths as u64, version 1 as u32.
    wide: bool,
}

impl<'a, R: Read + Seek> Walker<'a, R> {
    /// The value type of metadata entry `key` and, when that is u32, its value; `None` when the header has no
    /// such entry. Read as candle's parser reads it: either byte order of the magic, keys with trailing NULs
    /// stripped, and the last of repeated keys.
    fn declared(reader: &'a mut R, key: &str) -> io::Result<Option<(u32, u32)>> {
        let mut w = Walker { reader, wide: true };
        if ![*b"GGUF", *b"FUGG"].contains(&w.u32()?.to_le_bytes()) {
            return Err(io::ErrorKind::InvalidData.into());
        }
        w.wide = w.u32()? != 1;
        let _tensors = w.len()?;
        let entries = w.len()?;
        let mut found = None;
        for _ in 0..entries {
            let mut name = w.string()?;
            while name.last() == Some(&0) {
                name.pop();
            }
            let kind = w.u32()?;
            if name == key.as_bytes() {
                let value = if kind == U32 { w.u32()? } else { 0 };
                found = Some((kind, value));
                if kind != U32 {
                    w.skip_value(kind, 0)?;
                }
            } else {
                w.skip_value(kind, 0)?;
            }
        }
        Ok(found)
    }

    fn u32(&mut self) -> io::Result<u32> {
        let mut b = [0; 4];
        self.reader.read_exact(&mut b)?;
        Ok(u32::from_le_bytes(b))
    }

    fn u64(&mut self) -> io::Result<u64> {
        let mut b = [0; 8];
        self.reader.read_exact(&mut b)?;
        Ok(u64::from_le_bytes(b))
    }

    /// A count or a length.
    fn len(&mut self) -> io::Result<u64> {
        match self.wide {
            true => self.u64(),
            false => self.u32().map(u64::from),
        }
    }

    /// A key (keys are short; a longer one is a broken header).
    fn string(&mut self) -> io::Result<Vec<u8>> {
        let n = self.len()?;
        if n > 1 << 16 {
            return Err(io::ErrorKind::InvalidData.into());
        }
        let mut b = vec![0; n as usize];
        self.reader.read_exact(&mut b)?;
        Ok(b)
    }

    fn skip(&mut self, bytes: u64) -> io::Result<()> {
        let bytes = i64::try_from(bytes).map_err(|_| io::ErrorKind::InvalidData)?;
        self.reader.seek_relative(bytes)
    }

    /// Moves past one value of type `kind`. Each element of a string or nested array reads its length, so a
    /// count larger than the file ends at its end.
    fn skip_value(&mut self, kind: u32, depth: usize) -> io::Result<()> {
        if let Some(n) = fixed_size(kind) {
            return self.skip(n);
        }
        match kind {
            8 => {
                let n = self.len()?;
                self.skip(n)
            }
            ARRAY if depth < MAX_NESTING => {
                let elem = self.u32()?;
                let n = self.len()?;
                match fixed_size(elem) {
                    Some(size) => self.skip(n.checked_mul(size).ok_or(io::ErrorKind::InvalidData)?),
                    None => (0..n).try_for_each(|_| self.skip_value(elem, depth + 1)),
                }
            }
            _ => Err(io::ErrorKind::InvalidData.into()),
        }
    }
}

/// The bytes of one value of a fixed-size GGUF type; `None` for strings, arrays and unknown types.
fn fixed_size(kind: u32) -> Option<u64> {
    match kind {
        0 | 1 | 7 => Some(1),
        2 | 3 => Some(2),
        4..=6 => Some(4),
        10..=12 => Some(8),
        _ => None,
    }
}

/// Every tensor's data must start on the file's alignment, lie inside the file and overlap no other tensor's: a
/// header that promises more than the file holds (a corrupt or hostile file) is refused before anything is
/// allocated for it, and one whose tensors are misplaced before it loads as garbage.
fn check_tensors(content: &Content, file_len: u64) -> Result<(), String> {
    let alignment = match content.metadata.get(ALIGNMENT_KEY) {
        Some(Value::U32(a)) => u64::from(*a),
        _ => DEFAULT_ALIGNMENT,
    };
    let mut spans = Vec::with_capacity(content.tensor_infos.len());
    for (name, t) in &content.tensor_infos {
        let elems = t
            .shape
            .dims()
            .iter()
            .try_fold(1u64, |n, &d| n.checked_mul(d as u64))
            .ok_or_else(|| format!("tensor `{name}`: shape {:?} overflows", t.shape))?;
        let block = t.ggml_dtype.block_size() as u64;
        if elems % block != 0 {
            return Err(format!(
                "tensor `{name}`: {elems} elements are not whole {:?} blocks of {block}",
                t.ggml_dtype
            ));
        }
        if t.offset % alignment != 0 {
            return Err(format!(
                "tensor `{name}` starts at offset {}, not a multiple of the file's alignment {alignment}",
                t.offset
            ));
        }
        let end = (elems / block)
            .checked_mul(t.ggml_dtype.type_size() as u64)
            .and_then(|b| b.checked_add(t.offset))
            .filter(|&e| {
                e.checked_add(content.tensor_data_offset)
                    .is_some_and(|e| e <= file_len)
            })
            .ok_or_else(|| {
                format!(
                    "tensor `{name}` ({:?}, {:?}) lies past the end of the {file_len}-byte file",
                    t.ggml_dtype, t.shape
                )
            })?;
        spans.push((t.offset, end, name));
    }
    spans.sort();
    match spans.windows(2).find(|w| w[1].0 < w[0].1) {
        Some(w) => Err(format!(
            "tensors `{}` and `{}` overlap in the file",
            w[0].2, w[1].2
        )),
        None => Ok(()),
    }
}
