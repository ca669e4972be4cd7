//! zstd compression and decompression over chunks, with bounded output
//! buffers: decompressing a chunk of highly compressible data (a 1 GiB file
//! of zeros is a few KiB compressed) never allocates more than one output
//! buffer at a time; output is handed to a sink as it is produced.

use std::io;

use zstd::stream::raw::{Decoder, Encoder, InBuffer, Operation, OutBuffer};

/// The output buffer size zstd recommends for streaming (about 128 KiB).
const OUT_CHUNK: usize = 128 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error("compress: {0}")]
    Compress(#[source] io::Error),
    #[error("decompress: {0}")]
    Decompress(#[source] io::Error),
    #[error("compressed stream is truncated")]
    Truncated,
    #[error("write decompressed data: {0}")]
    Sink(#[source] io::Error),
}

/// A streaming compressor. Level 0 means "store uncompressed".
pub struct Compressor {
    encoder: Option<Encoder<'static>>,
}

impl Compressor {
    /// zstd at `level` (1 to 19, or negative for the fast levels); `workers`
    /// above 0 lets zstd compress large inputs on that many extra threads.
    pub fn new(level: i32, workers: u32) -> Result<Compressor, StreamError> {
        if level == 0 {
            return Ok(Compressor { encoder: None });
        }
        let mut encoder = Encoder::new(level).map_err(StreamError::Compress)?;
        if workers > 0 {
            // Without the multithreading feature this fails: carry on with
            // one thread rather than fail a push.
            let _ = encoder.set_parameter(zstd::zstd_safe::CParameter::NbWorkers(workers));
        }
        Ok(Compressor {
            encoder: Some(encoder),
        })
    }

    pub fn is_compressing(&self) -> bool {
        self.encoder.is_some()
    }

    /// Compresses `input`, appending what zstd emits to `out`.
    pub fn compress(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<(), StreamError> {
        let Some(encoder) = self.encoder.as_mut() else {
            out.extend_from_slice(input);
            return Ok(());
        };
        let mut src = InBuffer::around(input);
        while src.pos() < input.len() {
            out.reserve(OUT_CHUNK);
            let mut dst = OutBuffer::around_pos(out, out.len());
            encoder
                .run(&mut src, &mut dst)
                .map_err(StreamError::Compress)?;
        }
        Ok(())
    }

    /// Ends the stream, appending the rest to `out`.
    pub fn finish(&mut self, out: &mut Vec<u8>) -> Result<(), StreamError> {
        let Some(encoder) = self.encoder.as_mut() else {
            return Ok(());
        };
        loop {
            out.reserve(OUT_CHUNK);
            let mut dst = OutBuffer::around_pos(out, out.len());
            let remaining = encoder
                .finish(&mut dst, true)
                .map_err(StreamError::Compress)?;
            if remaining == 0 {
                return Ok(());
            }
        }
    }
}

/// A streaming decompressor; `None` passes bytes through unchanged.
pub struct Decompressor {
    decoder: Option<Decoder<'static>>,
    buf: Vec<u8>,
    /// Whether the last call ended exactly at a frame boundary.
    at_frame_end: bool,
}

impl Decompressor {
    pub fn new(compressed: bool) -> Result<Decompressor, StreamError> {
        let decoder = if compressed {
            Some(Decoder::new().map_err(StreamError::Decompress)?)
        } else {
            None
        };
        Ok(Decompressor {
            decoder,
            buf: Vec::with_capacity(OUT_CHUNK),
            at_frame_end: true,
        })
    }

    /// Decompresses `input`, handing output to `sink` in pieces of at most
    /// one output buffer.
    pub fn decompress(
        &mut self,
        input: &[u8],
        mut sink: impl FnMut(&[u8]) -> io::Result<()>,
    ) -> Result<(), StreamError> {
        let Some(decoder) = self.decoder.as_mut() else {
            return sink(input).map_err(StreamError::Sink);
        };
        let mut src = InBuffer::around(input);
        loop {
            self.buf.clear();
            let consumed_before = src.pos();
            let hint = {
                let mut dst = OutBuffer::around(&mut self.buf);
                decoder
                    .run(&mut src, &mut dst)
                    .map_err(StreamError::Decompress)?
            };
            if !self.buf.is_empty() {
                sink(&self.buf).map_err(StreamError::Sink)?;
            }
            // A call that neither read nor wrote anything (after a frame
            // ended exactly at a full output buffer) starts a new frame
            // and reports the header it expects: not news about this one.
            if src.pos() != consumed_before || !self.buf.is_empty() {
                self.at_frame_end = hint == 0;
            }
            let output_full = self.buf.len() == self.buf.capacity();
            if src.pos() == input.len() && !output_full {
                return Ok(());
            }
        }
    }

    /// Checks that the stream ended at the end of a frame.
    pub fn finish(&self) -> Result<(), StreamError> {
        if self.decoder.is_some() && !self.at_frame_end {
            return Err(StreamError::Truncated);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(level: i32, workers: u32, data: &[u8], chunk: usize) {
        let mut c = Compressor::new(level, workers).unwrap();
        let mut compressed = Vec::new();
        for part in data.chunks(chunk) {
            c.compress(part, &mut compressed).unwrap();
        }
        c.finish(&mut compressed).unwrap();
        let mut d = Decompressor::new(level != 0).unwrap();
        let mut out = Vec::new();
        let mut max_piece = 0;
        for part in compressed.chunks(chunk) {
            d.decompress(part, |piece| {
                max_piece = max_piece.max(piece.len());
                out.extend_from_slice(piece);
                Ok(())
            })
            .unwrap();
        }
        d.finish().unwrap();
        assert!(out == data, "round trip at level {level}");
        assert!(max_piece <= OUT_CHUNK, "output stays in bounded pieces");
    }

    #[test]
    fn round_trips_at_several_levels_and_chunkings() {
        let text: Vec<u8> = (0..3_000_000u32).map(|i| (i % 97) as u8).collect();
        round_trip(3, 0, &text, 1 << 20);
        round_trip(1, 2, &text, 65_536);
        round_trip(19, 0, &text[..100_000], 777);
        round_trip(-3, 0, &text, 1 << 20);
        round_trip(0, 0, &text, 4096);
        round_trip(3, 0, &[], 1);
    }

    #[test]
    fn zeros_decompress_in_bounded_pieces() {
        // 64 MiB of zeros compresses to a few KiB; feeding that as one chunk
        // must not produce one huge buffer.
        round_trip(3, 0, &vec![0u8; 64 << 20], 64 << 20);
    }

    #[test]
    fn truncated_stream_is_detected() {
        let data: Vec<u8> = (0..500_000u32).map(|i| (i * 7 % 256) as u8).collect();
        let mut c = Compressor::new(3, 0).unwrap();
        let mut compressed = Vec::new();
        c.compress(&data, &mut compressed).unwrap();
        c.finish(&mut compressed).unwrap();
        let mut d = Decompressor::new(true).unwrap();
        d.decompress(&compressed[..compressed.len() / 2], |_| Ok(()))
            .unwrap();
        assert!(matches!(d.finish(), Err(StreamError::Truncated)));
        let mut garbage = compressed.clone();
        garbage[0] ^= 0xFF;
        let mut d = Decompressor::new(true).unwrap();
        assert!(
            d.decompress(&garbage, |_| Ok(())).is_err(),
            "a bad frame header is an error"
        );
    }
}
