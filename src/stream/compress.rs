//! zstd compression and decompression over chunks, with bounded output
//! buffers: decompressing a chunk of highly compressible data (a 1 GiB file
//! of zeros is a few KiB compressed) never allocates more than one output
//! buffer at a time; output is handed to a sink as it is produced.

use std::io;

use zstd::stream::raw::{Decoder, InBuffer, Operation, OutBuffer};

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

/// A zstd compression context, through zstd's C API: zstd-safe offers
/// neither `ZSTD_c_stableInBuffer` ([`InPlaceCompressor`]) nor the block
/// splitter's level.
struct Context(std::ptr::NonNull<zstd_sys::ZSTD_CCtx>);

// SAFETY: a zstd context is plain memory (and, with workers, threads of
// its own) with no tie to the thread that made it; `&mut self` methods
// keep it to one thread at a time.
unsafe impl Send for Context {}

impl Context {
    /// A context at `level`, on `workers` extra threads if above 0.
    ///
    /// zstd 1.5.7 added a pre-splitter that looks for a better place to
    /// end each block: it spends about a tenth of the time of level 3 on
    /// WAL and gains under 0.5% in size (measured on pgbench WAL and on
    /// less compressible WAL). It is turned off, as it is in the zstd
    /// before 1.5.7 that pgBackRest and the `zstd` tool of Debian 12 use.
    /// The frame and the level are the same.
    fn new(level: i32, workers: u32) -> Result<Context, StreamError> {
        // SAFETY: ZSTD_createCCtx has no preconditions; null is an
        // allocation failure.
        let cctx =
            std::ptr::NonNull::new(unsafe { zstd_sys::ZSTD_createCCtx() }).ok_or_else(|| {
                StreamError::Compress(io::Error::other("cannot allocate a zstd context"))
            })?;
        let mut context = Context(cctx);
        context.set(zstd_sys::ZSTD_cParameter::ZSTD_c_compressionLevel, level)?;
        // ZSTD_c_blockSplitterLevel (zstd.h: ZSTD_c_experimentalParam20):
        // 1 never splits ahead of compressing. A zstd before 1.5.7 (linked
        // from the system) has neither the splitter nor the parameter.
        if splitter_known() {
            context.set(zstd_sys::ZSTD_cParameter::ZSTD_c_experimentalParam20, 1)?;
        }
        if workers > 0 {
            // Without zstd's multithreading this fails: carry on with one
            // thread rather than fail a push.
            let _ = context.set(
                zstd_sys::ZSTD_cParameter::ZSTD_c_nbWorkers,
                i32::try_from(workers).unwrap_or(i32::MAX),
            );
        }
        Ok(context)
    }

    fn set(&mut self, parameter: zstd_sys::ZSTD_cParameter, value: i32) -> Result<(), StreamError> {
        // SAFETY: a live context; the parameters are plain values, which
        // zstd checks.
        zstd_result(unsafe { zstd_sys::ZSTD_CCtx_setParameter(self.0.as_ptr(), parameter, value) })
            .map(|_| ())
    }

    /// One call of `ZSTD_compressStream2` from `src` into the spare
    /// capacity of `out` (at least [`OUT_CHUNK`]), which grows by what
    /// zstd wrote. Returns zstd's hint: 0 once a frame is ended.
    fn step(
        &mut self,
        src: &mut zstd_sys::ZSTD_inBuffer,
        out: &mut Vec<u8>,
        directive: zstd_sys::ZSTD_EndDirective,
    ) -> Result<usize, StreamError> {
        out.reserve(OUT_CHUNK);
        let spare = out.capacity() - out.len();
        let mut dst = zstd_sys::ZSTD_outBuffer {
            // SAFETY: `len` is within the allocation.
            dst: unsafe { out.as_mut_ptr().add(out.len()) }.cast(),
            size: spare,
            pos: 0,
        };
        // SAFETY: `src` describes memory the caller keeps valid for what
        // zstd may read of it; `dst` is the spare capacity of `out`, which
        // zstd writes at most `size` bytes of.
        let code =
            unsafe { zstd_sys::ZSTD_compressStream2(self.0.as_ptr(), &mut dst, src, directive) };
        let hint = zstd_result(code)?;
        // SAFETY: zstd initialised `dst.pos` bytes after `len`.
        unsafe { out.set_len(out.len() + dst.pos) };
        Ok(hint)
    }
}

/// Whether the linked zstd has the block pre-splitter and numbers its
/// level as zstd.h 1.5.7 does (experimental parameters are numbered per
/// release).
fn splitter_known() -> bool {
    // SAFETY: no preconditions.
    let version = unsafe { zstd_sys::ZSTD_versionNumber() };
    (10507..10600).contains(&version)
}

impl Drop for Context {
    fn drop(&mut self) {
        // SAFETY: the context was made by ZSTD_createCCtx and is freed once.
        unsafe {
            zstd_sys::ZSTD_freeCCtx(self.0.as_ptr());
        }
    }
}

/// A streaming compressor. Level 0 means "store uncompressed".
pub struct Compressor {
    context: Option<Context>,
}

impl Compressor {
    /// zstd at `level` (1 to 19, or negative for the fast levels); `workers`
    /// above 0 lets zstd compress large inputs on that many extra threads.
    pub fn new(level: i32, workers: u32) -> Result<Compressor, StreamError> {
        if level == 0 {
            return Ok(Compressor { context: None });
        }
        Ok(Compressor {
            context: Some(Context::new(level, workers)?),
        })
    }

    pub fn is_compressing(&self) -> bool {
        self.context.is_some()
    }

    /// Compresses `input`, appending what zstd emits to `out`.
    pub fn compress(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<(), StreamError> {
        let Some(context) = self.context.as_mut() else {
            out.extend_from_slice(input);
            return Ok(());
        };
        // zstd copies what it keeps of `input` into its own buffers before
        // the call returns.
        let mut src = zstd_sys::ZSTD_inBuffer {
            src: input.as_ptr().cast(),
            size: input.len(),
            pos: 0,
        };
        while src.pos < input.len() {
            context.step(&mut src, out, zstd_sys::ZSTD_EndDirective::ZSTD_e_continue)?;
        }
        Ok(())
    }

    /// Ends the stream, appending the rest to `out`.
    pub fn finish(&mut self, out: &mut Vec<u8>) -> Result<(), StreamError> {
        let Some(context) = self.context.as_mut() else {
            return Ok(());
        };
        let mut src = zstd_sys::ZSTD_inBuffer {
            src: std::ptr::null(),
            size: 0,
            pos: 0,
        };
        while context.step(&mut src, out, zstd_sys::ZSTD_EndDirective::ZSTD_e_end)? != 0 {}
        Ok(())
    }
}

/// The most memory compressing at `level` takes beyond its input and
/// output: zstd's own estimate for a streaming context, which includes
/// its window buffer. The in-place compressor keeps no window buffer, but
/// as many of the input's mapped pages stay resident instead.
pub fn context_bytes(level: i32) -> usize {
    // SAFETY: a pure function of the level.
    unsafe { zstd_sys::ZSTD_estimateCStreamSize(level) }
}

/// zstd's window at `level` for inputs over 256 KiB (its table of default
/// parameters, zstd 1.5: 2 MiB at level 3).
pub fn window_bytes_at(level: i32) -> usize {
    1 << match level {
        ..=1 => 19,
        2 => 20,
        3..=8 => 21,
        9..=16 => 22,
        17..=19 => 23,
        20 => 25,
        21 => 26,
        _ => 27,
    }
}

/// A zstd compressor for an input that stays where it is until the frame
/// ends (a read-only mapping of a WAL segment). zstd reads the input in
/// place instead of copying it into its own window buffer
/// (`ZSTD_c_stableInBuffer`, which zstd-safe does not offer, hence the C
/// API here). That saves the copy and, more, keeps the window in one piece:
/// streamed input goes through a ring of about 2 MiB, and once the ring
/// wraps every block is matched on zstd's slower two-segment path. The
/// frame is the same format and level; only the work to make it is less.
///
/// The input is given in steps (`compress_to`) so the caller can hash,
/// store and release each step as it goes.
pub struct InPlaceCompressor<'a> {
    context: Context,
    input: &'a [u8],
    /// zstd's position in `input`: it asks for the same pointer and
    /// position back on every call.
    pos: usize,
    level: i32,
}

fn zstd_result(code: usize) -> Result<usize, StreamError> {
    // SAFETY: ZSTD_isError and ZSTD_getErrorName take any value and return
    // a static string.
    unsafe {
        if zstd_sys::ZSTD_isError(code) != 0 {
            let name = std::ffi::CStr::from_ptr(zstd_sys::ZSTD_getErrorName(code));
            return Err(StreamError::Compress(io::Error::other(
                name.to_string_lossy().into_owned(),
            )));
        }
    }
    Ok(code)
}

impl<'a> InPlaceCompressor<'a> {
    /// zstd at `level` (not 0: storing uncompressed needs no compressor)
    /// over all of `input`, which is borrowed until the frame ends.
    pub fn new(level: i32, input: &'a [u8]) -> Result<InPlaceCompressor<'a>, StreamError> {
        assert!(level != 0, "level 0 stores uncompressed");
        let mut context = Context::new(level, 0)?;
        // ZSTD_c_stableInBuffer (zstd.h: ZSTD_c_experimentalParam9).
        context.set(zstd_sys::ZSTD_cParameter::ZSTD_c_experimentalParam9, 1)?;
        // SAFETY: a live context; the size is a plain value.
        zstd_result(unsafe {
            zstd_sys::ZSTD_CCtx_setPledgedSrcSize(context.0.as_ptr(), input.len() as u64)
        })?;
        Ok(InPlaceCompressor {
            context,
            input,
            pos: 0,
            level,
        })
    }

    /// How far zstd has taken the input (it may still hold up to one
    /// block, 128 KiB, before this point unread); it reads no further back
    /// than [`InPlaceCompressor::window_bytes`] behind this point.
    pub fn position(&self) -> usize {
        self.pos
    }

    /// zstd's window at this level for inputs over 256 KiB
    /// ([`window_bytes_at`]).
    pub fn window_bytes(&self) -> usize {
        window_bytes_at(self.level)
    }

    fn step(
        &mut self,
        end: usize,
        out: &mut Vec<u8>,
        directive: zstd_sys::ZSTD_EndDirective,
    ) -> Result<usize, StreamError> {
        // `src` points into `self.input`, which outlives the context (the
        // borrow 'a) and which nothing writes meanwhile (a shared borrow);
        // it is always the same pointer, and zstd checks that.
        let mut src = zstd_sys::ZSTD_inBuffer {
            src: self.input.as_ptr().cast(),
            size: end,
            pos: self.pos,
        };
        let hint = self.context.step(&mut src, out, directive)?;
        self.pos = src.pos;
        Ok(hint)
    }

    /// Compresses the input up to `end` (which only grows), appending what
    /// zstd emits to `out`.
    pub fn compress_to(&mut self, end: usize, out: &mut Vec<u8>) -> Result<(), StreamError> {
        assert!(end >= self.pos && end <= self.input.len());
        while self.pos < end {
            self.step(end, out, zstd_sys::ZSTD_EndDirective::ZSTD_e_continue)?;
        }
        Ok(())
    }

    /// Compresses the rest of the input and ends the frame.
    pub fn finish(mut self, out: &mut Vec<u8>) -> Result<(), StreamError> {
        let end = self.input.len();
        while self.step(end, out, zstd_sys::ZSTD_EndDirective::ZSTD_e_end)? != 0 {}
        Ok(())
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

    /// Compresses `data` in place in steps of `step`, checks that a
    /// streaming decompressor gives it back, and returns the frame.
    fn in_place_round_trip(level: i32, data: &[u8], step: usize) -> Vec<u8> {
        let mut c = InPlaceCompressor::new(level, data).unwrap();
        let mut frame = Vec::new();
        let mut end = 0;
        while end < data.len() {
            end = (end + step).min(data.len());
            c.compress_to(end, &mut frame).unwrap();
            assert!(c.position() <= end);
        }
        c.finish(&mut frame).unwrap();
        let mut d = Decompressor::new(true).unwrap();
        let mut out = Vec::new();
        d.decompress(&frame, |piece| {
            out.extend_from_slice(piece);
            Ok(())
        })
        .unwrap();
        d.finish().unwrap();
        assert!(
            out == data,
            "in-place round trip at level {level}, step {step}"
        );
        frame
    }

    #[test]
    fn in_place_compression_round_trips_and_matches_streaming() {
        // 7 MiB of a 512 KiB random block repeated with one byte changed
        // in each copy: every match is 512 KiB back, across step
        // boundaries and across where a streaming window's ring wraps.
        let block = crate::storage::conformance::pattern(512 << 10, 11);
        let text: Vec<u8> = (0..14)
            .flat_map(|i| {
                let mut copy = block.clone();
                copy[i * 1000] ^= 0xFF;
                copy
            })
            .collect();
        let noise = crate::storage::conformance::pattern(3_000_000, 7);
        for (data, step) in [
            (&text[..], 1 << 20),
            (&text[..], 777_777),
            (&noise[..], 1 << 20),
            (&text[..100], 4096),
            (&[][..], 1),
        ] {
            in_place_round_trip(3, data, step);
        }
        in_place_round_trip(1, &text, 1 << 20);
        in_place_round_trip(-5, &text, 1 << 20);
        // The same frame format and level: no larger than streaming gives.
        let in_place = in_place_round_trip(3, &text, 1 << 20);
        let mut c = Compressor::new(3, 0).unwrap();
        let mut streamed = Vec::new();
        for part in text.chunks(1 << 20) {
            c.compress(part, &mut streamed).unwrap();
        }
        c.finish(&mut streamed).unwrap();
        assert!(
            in_place.len() <= streamed.len() + streamed.len() / 100,
            "in place {} bytes, streamed {}",
            in_place.len(),
            streamed.len()
        );
        assert!(
            in_place.len() < text.len() / 8,
            "the repeats 512 KiB back were found: {} bytes",
            in_place.len()
        );
    }

    /// The value of `parameter` in `context`.
    fn parameter(context: &Context, parameter: zstd_sys::ZSTD_cParameter) -> i32 {
        let mut value = 0;
        // SAFETY: a live context and a plain out-parameter.
        zstd_result(unsafe {
            zstd_sys::ZSTD_CCtx_getParameter(context.0.as_ptr(), parameter, &mut value)
        })
        .unwrap();
        value
    }

    #[test]
    fn contexts_do_not_pre_split_blocks_and_keep_the_level() {
        use zstd_sys::ZSTD_cParameter::{
            ZSTD_c_compressionLevel, ZSTD_c_experimentalParam20, ZSTD_c_nbWorkers,
        };
        // The zstd this crate builds is the one the setting is for: a new
        // one makes this fail, and its parameter's number must be checked
        // in zstd.h before `splitter_known` admits it.
        assert!(splitter_known(), "zstd {}", unsafe {
            zstd_sys::ZSTD_versionNumber()
        });
        let streaming = Compressor::new(3, 2).unwrap();
        let context = streaming.context.as_ref().unwrap();
        assert_eq!(parameter(context, ZSTD_c_experimentalParam20), 1);
        assert_eq!(parameter(context, ZSTD_c_compressionLevel), 3);
        assert_eq!(parameter(context, ZSTD_c_nbWorkers), 2);
        let data = vec![7u8; 1000];
        let in_place = InPlaceCompressor::new(5, &data).unwrap();
        assert_eq!(parameter(&in_place.context, ZSTD_c_experimentalParam20), 1);
        assert_eq!(parameter(&in_place.context, ZSTD_c_compressionLevel), 5);
        // A fresh zstd context would pre-split (0 lets zstd choose): the
        // setting is ours, not zstd's default.
        let fresh =
            Context(std::ptr::NonNull::new(unsafe { zstd_sys::ZSTD_createCCtx() }).unwrap());
        assert_eq!(parameter(&fresh, ZSTD_c_experimentalParam20), 0);
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
