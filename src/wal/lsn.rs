//! WAL positions and the numbers derived from them: [`Lsn`], [`TimelineId`],
//! [`WalSegmentSize`] and [`SegmentNo`], with their text forms and serde forms.
//!
//! This module owns the arithmetic that PostgreSQL keeps in
//! `src/include/access/xlog_internal.h` (`XLByteToSeg`, `XLogSegmentOffset`,
//! `XLogSegNoOffsetToRecPtr`, `XLogSegmentsPerXLogId`, `IsValidWalSegSize`)
//! and the `%X/%X` LSN notation. It must not do any I/O and knows nothing of
//! files, storage or repositories; file names live in `name.rs`.

use std::fmt;
use std::str::FromStr;

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};
use thiserror::Error;

use super::name::NameError;

/// A position in the write-ahead log (PostgreSQL's `XLogRecPtr`).
///
/// Displays as PostgreSQL does (`%X/%X`, high and low 32 bits in uppercase
/// hex, e.g. `16/B374D848`) and serialises as that string.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Default)]
pub struct Lsn(pub u64);

impl Lsn {
    /// PostgreSQL's `InvalidXLogRecPtr`.
    pub const INVALID: Lsn = Lsn(0);

    /// The segment holding this position (`XLByteToSeg` in xlog_internal.h).
    pub fn segment_no(self, size: WalSegmentSize) -> SegmentNo {
        SegmentNo(self.0 / size.bytes())
    }

    /// Offset of this position within its segment (`XLogSegmentOffset`).
    pub fn segment_offset(self, size: WalSegmentSize) -> u64 {
        self.0 % size.bytes()
    }

    /// This position moved forward by `bytes`, or `None` past the end of the
    /// 64-bit WAL address space.
    pub fn checked_add(self, bytes: u64) -> Option<Lsn> {
        self.0.checked_add(bytes).map(Lsn)
    }

    /// Whether this is not [`Lsn::INVALID`] (`XLogRecPtrIsInvalid` negated).
    pub fn is_valid(self) -> bool {
        self != Lsn::INVALID
    }
}

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // LSN_FORMAT_ARGS in PostgreSQL: high word, "/", low word.
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xFFFF_FFFF)
    }
}

/// Why a string is not an LSN in `X/X` notation.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum LsnParseError {
    /// No `/` between the two halves.
    #[error("invalid LSN \"{input}\": expected two hex numbers separated by \"/\", like \"16/B374D848\"")]
    MissingSeparator { input: String },
    /// One half is empty, longer than 8 digits or not hexadecimal.
    #[error("invalid LSN \"{input}\": \"{part}\" is not 1 to 8 hex digits")]
    InvalidPart { input: String, part: String },
}

/// Parses 1 to 8 hex digits (either case) with no sign, prefix or spaces.
fn parse_hex_word(part: &str) -> Option<u32> {
    if part.is_empty() || part.len() > 8 || !part.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u32::from_str_radix(part, 16).ok()
}

impl FromStr for Lsn {
    type Err = LsnParseError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let (hi, lo) = input
            .split_once('/')
            .ok_or_else(|| LsnParseError::MissingSeparator {
                input: input.to_owned(),
            })?;
        let word = |part: &str| {
            parse_hex_word(part).ok_or_else(|| LsnParseError::InvalidPart {
                input: input.to_owned(),
                part: part.to_owned(),
            })
        };
        let hi = word(hi)?;
        let lo = word(lo)?;
        Ok(Lsn((u64::from(hi) << 32) | u64::from(lo)))
    }
}

impl Serialize for Lsn {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Lsn {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct LsnVisitor;

        impl Visitor<'_> for LsnVisitor {
            type Value = Lsn;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an LSN string like \"16/B374D848\"")
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<Lsn, E> {
                v.parse().map_err(E::custom)
            }
        }

        deserializer.deserialize_str(LsnVisitor)
    }
}

/// A timeline ID (PostgreSQL's `TimeLineID`). Zero is never a valid timeline.
///
/// Displays in decimal (as in `recovery_target_timeline` or history files);
/// [`TimelineId::to_hex`] gives the 8-digit form used in file names.
/// Serialises as a number.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct TimelineId(pub u32);

impl TimelineId {
    /// The timeline a freshly initialised cluster starts on.
    pub const FIRST: TimelineId = TimelineId(1);

    /// The 8 uppercase hex digits used in WAL file names (`%08X`).
    pub fn to_hex(&self) -> String {
        format!("{:08X}", self.0)
    }

    /// Parses the 8-uppercase-hex-digit form used in WAL file names.
    pub fn from_hex(input: &str) -> Result<TimelineId, NameError> {
        if input.len() != 8 || !is_upper_hex(input) {
            return Err(NameError::InvalidTimelineHex {
                input: input.to_owned(),
            });
        }
        match u32::from_str_radix(input, 16) {
            Ok(0) => Err(NameError::ZeroTimeline {
                name: input.to_owned(),
            }),
            Ok(tli) => Ok(TimelineId(tli)),
            // Unreachable after the digit check, but never panic on input.
            Err(_) => Err(NameError::InvalidTimelineHex {
                input: input.to_owned(),
            }),
        }
    }
}

/// Whether every byte of `s` is `0-9` or `A-F` (what `strspn(s,
/// "0123456789ABCDEF")` accepts in xlog_internal.h).
pub(crate) fn is_upper_hex(s: &str) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_digit() || (b'A'..=b'F').contains(&b))
}

impl fmt::Display for TimelineId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Why a string is not a decimal timeline ID.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum TimelineParseError {
    /// Not a plain decimal number that fits in 32 bits.
    #[error("invalid timeline \"{input}\": expected a decimal number from 1 to 4294967295")]
    NotDecimal { input: String },
    /// Zero, which PostgreSQL never uses as a timeline.
    #[error("invalid timeline \"{input}\": timeline 0 does not exist, timelines start at 1")]
    Zero { input: String },
}

impl FromStr for TimelineId {
    type Err = TimelineParseError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let not_decimal = || TimelineParseError::NotDecimal {
            input: input.to_owned(),
        };
        // u32::from_str would accept a leading "+"; only digits are allowed.
        if input.is_empty() || !input.bytes().all(|b| b.is_ascii_digit()) {
            return Err(not_decimal());
        }
        match input.parse::<u32>() {
            Ok(0) => Err(TimelineParseError::Zero {
                input: input.to_owned(),
            }),
            Ok(tli) => Ok(TimelineId(tli)),
            Err(_) => Err(not_decimal()),
        }
    }
}

impl Serialize for TimelineId {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_u32(self.0)
    }
}

impl<'de> Deserialize<'de> for TimelineId {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        match u32::deserialize(deserializer)? {
            0 => Err(de::Error::custom(
                "invalid timeline 0: timelines start at 1",
            )),
            tli => Ok(TimelineId(tli)),
        }
    }
}

const MIB: u64 = 1024 * 1024;
const GIB: u64 = 1024 * MIB;
/// The span of one "xlog id", the high word of an LSN (`0x100000000`).
const XLOG_ID_SPAN: u64 = 0x1_0000_0000;

/// A WAL segment size (`wal_segment_size`, chosen at initdb), guaranteed to
/// be a power of two from 1 MiB to 1 GiB like PostgreSQL's
/// `IsValidWalSegSize` (`WalSegMinSize`..=`WalSegMaxSize`) in xlog_internal.h.
///
/// Displays as e.g. `16 MiB` and serialises as a number of bytes.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct WalSegmentSize(u32);

/// Why a number of bytes is not a valid WAL segment size.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SegmentSizeError {
    /// Not a power of two (zero included).
    #[error("invalid WAL segment size {bytes} bytes: must be a power of two from 1 MiB to 1 GiB")]
    NotPowerOfTwo { bytes: u64 },
    /// A power of two, but below 1 MiB or above 1 GiB.
    #[error("invalid WAL segment size {bytes} bytes: must be from 1 MiB to 1 GiB")]
    OutOfRange { bytes: u64 },
}

impl WalSegmentSize {
    /// PostgreSQL's default, `DEFAULT_XLOG_SEG_SIZE` (16 MiB).
    pub const DEFAULT: WalSegmentSize = WalSegmentSize(16 * 1024 * 1024);
    /// `WalSegMinSize`.
    pub const MIN_BYTES: u64 = MIB;
    /// `WalSegMaxSize`.
    pub const MAX_BYTES: u64 = GIB;

    /// Accepts exactly the sizes `IsValidWalSegSize` accepts.
    pub fn new(bytes: u64) -> Result<WalSegmentSize, SegmentSizeError> {
        if !bytes.is_power_of_two() {
            return Err(SegmentSizeError::NotPowerOfTwo { bytes });
        }
        if !(Self::MIN_BYTES..=Self::MAX_BYTES).contains(&bytes) {
            return Err(SegmentSizeError::OutOfRange { bytes });
        }
        u32::try_from(bytes)
            .map(WalSegmentSize)
            .map_err(|_| SegmentSizeError::OutOfRange { bytes })
    }

    /// The size in bytes.
    pub fn bytes(self) -> u64 {
        u64::from(self.0)
    }

    /// Segments per xlog id (`XLogSegmentsPerXLogId`): how many segment
    /// numbers share one high LSN word, i.e. the range of the last 8 hex
    /// digits of a segment file name (256 for 16 MiB, 4 for 1 GiB).
    pub fn segments_per_xlog_id(self) -> u64 {
        XLOG_ID_SPAN / self.bytes()
    }
}

impl Default for WalSegmentSize {
    fn default() -> Self {
        WalSegmentSize::DEFAULT
    }
}

impl fmt::Display for WalSegmentSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let bytes = self.bytes();
        if bytes >= GIB {
            write!(f, "{} GiB", bytes / GIB)
        } else {
            write!(f, "{} MiB", bytes / MIB)
        }
    }
}

impl Serialize for WalSegmentSize {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_u64(self.bytes())
    }
}

impl<'de> Deserialize<'de> for WalSegmentSize {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let bytes = u64::deserialize(deserializer)?;
        WalSegmentSize::new(bytes).map_err(de::Error::custom)
    }
}

/// A WAL segment number (PostgreSQL's `XLogSegNo`): the LSN divided by the
/// segment size. Displays in decimal; file names are built in `name.rs`.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Default)]
pub struct SegmentNo(pub u64);

impl SegmentNo {
    /// The following segment, or `None` at `u64::MAX`.
    pub fn next(self) -> Option<SegmentNo> {
        self.0.checked_add(1).map(SegmentNo)
    }

    /// The preceding segment, or `None` at segment 0.
    pub fn prev(self) -> Option<SegmentNo> {
        self.0.checked_sub(1).map(SegmentNo)
    }

    /// The first LSN in this segment (`XLogSegNoOffsetToRecPtr` with offset
    /// 0). Segment numbers past the end of the address space, which no file
    /// name can produce, saturate at `u64::MAX` instead of wrapping.
    pub fn start_lsn(self, size: WalSegmentSize) -> Lsn {
        Lsn(self.0.saturating_mul(size.bytes()))
    }

    /// The first LSN after this segment, i.e. the start of the next one. The
    /// very last segment of the address space ends at `u64::MAX` (saturated).
    pub fn end_lsn(self, size: WalSegmentSize) -> Lsn {
        Lsn(self.0.saturating_add(1).saturating_mul(size.bytes()))
    }
}

impl fmt::Display for SegmentNo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn size(bytes: u64) -> WalSegmentSize {
        match WalSegmentSize::new(bytes) {
            Ok(s) => s,
            Err(e) => panic!("test size {bytes}: {e}"),
        }
    }

    #[test]
    fn lsn_display() {
        assert_eq!(Lsn(0).to_string(), "0/0");
        assert_eq!(Lsn(0x16_B374_D848).to_string(), "16/B374D848");
        assert_eq!(Lsn(0x0200_0028).to_string(), "0/2000028");
        assert_eq!(Lsn(u64::MAX).to_string(), "FFFFFFFF/FFFFFFFF");
        assert_eq!(Lsn::INVALID, Lsn::default());
        assert!(!Lsn::INVALID.is_valid());
        assert!(Lsn(1).is_valid());
    }

    #[test]
    fn lsn_parse_round_trip() {
        for v in [
            0,
            1,
            0x16_B374_D848,
            0x0200_0028,
            0xFFFF_FFFF,
            1 << 32,
            u64::MAX,
        ] {
            let text = Lsn(v).to_string();
            assert_eq!(text.parse::<Lsn>(), Ok(Lsn(v)), "{text}");
        }
        assert_eq!("16/b374d848".parse::<Lsn>(), Ok(Lsn(0x16_B374_D848)));
        assert_eq!("00000000/00000001".parse::<Lsn>(), Ok(Lsn(1)));
    }

    #[test]
    fn lsn_parse_errors() {
        for bad in ["", "0", "16B374D848", "16-B374D848"] {
            assert_eq!(
                bad.parse::<Lsn>(),
                Err(LsnParseError::MissingSeparator { input: bad.into() }),
                "{bad}"
            );
        }
        let cases = [
            ("/0", ""),
            ("0/", ""),
            ("123456789/0", "123456789"),
            ("0/123456789", "123456789"),
            ("G/0", "G"),
            ("+1/0", "+1"),
            (" 1/0", " 1"),
            ("0/1/2", "1/2"),
            ("0x1/0", "0x1"),
        ];
        for (bad, part) in cases {
            assert_eq!(
                bad.parse::<Lsn>(),
                Err(LsnParseError::InvalidPart {
                    input: bad.into(),
                    part: part.into()
                }),
                "{bad}"
            );
        }
        let msg = "x".parse::<Lsn>().map_err(|e| e.to_string());
        assert_eq!(
            msg,
            Err("invalid LSN \"x\": expected two hex numbers separated by \"/\", like \"16/B374D848\"".into())
        );
        let msg = "0/zz".parse::<Lsn>().map_err(|e| e.to_string());
        assert_eq!(
            msg,
            Err("invalid LSN \"0/zz\": \"zz\" is not 1 to 8 hex digits".into())
        );
    }

    #[test]
    fn lsn_serde() {
        let json = serde_json::to_string(&Lsn(0x16_B374_D848)).ok();
        assert_eq!(json.as_deref(), Some("\"16/B374D848\""));
        let back: Result<Lsn, _> = serde_json::from_str("\"16/B374D848\"");
        assert_eq!(back.ok(), Some(Lsn(0x16_B374_D848)));
        let bad: Result<Lsn, _> = serde_json::from_str("\"16\"");
        let err = bad.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains("invalid LSN \"16\""), "{err}");
        let wrong_type: Result<Lsn, _> = serde_json::from_str("5");
        let err = wrong_type.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains("an LSN string"), "{err}");
    }

    #[test]
    fn lsn_segment_arithmetic() {
        let s16 = WalSegmentSize::DEFAULT;
        let lsn = Lsn(0x16_B374_D848);
        assert_eq!(lsn.segment_no(s16), SegmentNo(0x16B3));
        assert_eq!(lsn.segment_offset(s16), 0x74_D848);
        let s1g = size(1 << 30);
        assert_eq!(lsn.segment_no(s1g), SegmentNo(0x16 * 4 + 2));
        assert_eq!(lsn.segment_offset(s1g), 0x3374_D848);
        assert_eq!(Lsn(5).checked_add(10), Some(Lsn(15)));
        assert_eq!(Lsn(u64::MAX).checked_add(1), None);
        assert_eq!(Lsn(u64::MAX).checked_add(0), Some(Lsn(u64::MAX)));
    }

    #[test]
    fn timeline_hex() {
        assert_eq!(TimelineId(1).to_hex(), "00000001");
        assert_eq!(TimelineId(0xAB).to_hex(), "000000AB");
        assert_eq!(TimelineId::from_hex("000000AB"), Ok(TimelineId(0xAB)));
        assert_eq!(TimelineId::from_hex("FFFFFFFF"), Ok(TimelineId(u32::MAX)));
        for bad in [
            "000000ab",
            "0000001",
            "000000001",
            "",
            "0000000G",
            "+0000001",
        ] {
            assert_eq!(
                TimelineId::from_hex(bad),
                Err(NameError::InvalidTimelineHex { input: bad.into() }),
                "{bad}"
            );
        }
        assert_eq!(
            TimelineId::from_hex("00000000"),
            Err(NameError::ZeroTimeline {
                name: "00000000".into()
            })
        );
    }

    #[test]
    fn timeline_decimal() {
        assert_eq!(TimelineId(12).to_string(), "12");
        assert_eq!("2".parse::<TimelineId>(), Ok(TimelineId(2)));
        assert_eq!("4294967295".parse::<TimelineId>(), Ok(TimelineId(u32::MAX)));
        for bad in ["", "+2", "-1", "2 ", "0x2", "4294967296", "two"] {
            assert_eq!(
                bad.parse::<TimelineId>(),
                Err(TimelineParseError::NotDecimal { input: bad.into() }),
                "{bad}"
            );
        }
        assert_eq!(
            "00".parse::<TimelineId>(),
            Err(TimelineParseError::Zero { input: "00".into() })
        );
        let msg = "0".parse::<TimelineId>().map_err(|e| e.to_string());
        assert_eq!(
            msg,
            Err("invalid timeline \"0\": timeline 0 does not exist, timelines start at 1".into())
        );
        assert_eq!(TimelineId::FIRST, TimelineId(1));
    }

    #[test]
    fn timeline_serde() {
        assert_eq!(
            serde_json::to_string(&TimelineId(7)).ok().as_deref(),
            Some("7")
        );
        let back: Result<TimelineId, _> = serde_json::from_str("7");
        assert_eq!(back.ok(), Some(TimelineId(7)));
        let zero: Result<TimelineId, _> = serde_json::from_str("0");
        let err = zero.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains("invalid timeline 0"), "{err}");
        let text: Result<TimelineId, _> = serde_json::from_str("\"7\"");
        assert!(text.is_err());
    }

    #[test]
    fn segment_sizes_accepted() {
        let cases = [
            (1 << 20, 4096, "1 MiB"),
            (16 << 20, 256, "16 MiB"),
            (64 << 20, 64, "64 MiB"),
            (512 << 20, 8, "512 MiB"),
            (1 << 30, 4, "1 GiB"),
        ];
        for (bytes, per_id, shown) in cases {
            let s = size(bytes);
            assert_eq!(s.bytes(), bytes);
            assert_eq!(s.segments_per_xlog_id(), per_id);
            assert_eq!(s.to_string(), shown);
        }
        assert_eq!(WalSegmentSize::DEFAULT.bytes(), 16 << 20);
        assert_eq!(WalSegmentSize::default(), WalSegmentSize::DEFAULT);
    }

    #[test]
    fn segment_sizes_rejected() {
        assert_eq!(
            WalSegmentSize::new(0),
            Err(SegmentSizeError::NotPowerOfTwo { bytes: 0 })
        );
        assert_eq!(
            WalSegmentSize::new(3 << 20),
            Err(SegmentSizeError::NotPowerOfTwo { bytes: 3 << 20 })
        );
        assert_eq!(
            WalSegmentSize::new(2 << 30),
            Err(SegmentSizeError::OutOfRange { bytes: 2 << 30 })
        );
        assert_eq!(
            WalSegmentSize::new(512 << 10),
            Err(SegmentSizeError::OutOfRange { bytes: 512 << 10 })
        );
        assert_eq!(
            WalSegmentSize::new(1 << 63),
            Err(SegmentSizeError::OutOfRange { bytes: 1 << 63 })
        );
        assert_eq!(
            WalSegmentSize::new(3 << 20).map_err(|e| e.to_string()),
            Err("invalid WAL segment size 3145728 bytes: must be a power of two from 1 MiB to 1 GiB".into())
        );
        assert_eq!(
            WalSegmentSize::new(2 << 30).map_err(|e| e.to_string()),
            Err("invalid WAL segment size 2147483648 bytes: must be from 1 MiB to 1 GiB".into())
        );
    }

    #[test]
    fn segment_size_serde() {
        let json = serde_json::to_string(&WalSegmentSize::DEFAULT).ok();
        assert_eq!(json.as_deref(), Some("16777216"));
        let back: Result<WalSegmentSize, _> = serde_json::from_str("67108864");
        assert_eq!(back.ok(), Some(size(64 << 20)));
        let bad: Result<WalSegmentSize, _> = serde_json::from_str("3145728");
        let err = bad.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains("must be a power of two"), "{err}");
        let neg: Result<WalSegmentSize, _> = serde_json::from_str("-1");
        assert!(neg.is_err());
    }

    #[test]
    fn segment_no_steps() {
        assert_eq!(SegmentNo(0).prev(), None);
        assert_eq!(SegmentNo(1).prev(), Some(SegmentNo(0)));
        assert_eq!(SegmentNo(0).next(), Some(SegmentNo(1)));
        assert_eq!(SegmentNo(u64::MAX).next(), None);
        assert_eq!(SegmentNo(0xFF).next(), Some(SegmentNo(0x100)));
        assert_eq!(SegmentNo(42).to_string(), "42");
    }

    #[test]
    fn segment_no_lsns() {
        let s16 = WalSegmentSize::DEFAULT;
        assert_eq!(SegmentNo(0).start_lsn(s16), Lsn(0));
        assert_eq!(SegmentNo(0).end_lsn(s16), Lsn(0x100_0000));
        assert_eq!(SegmentNo(0x100).start_lsn(s16).to_string(), "1/0");
        assert_eq!(SegmentNo(0xFF).end_lsn(s16).to_string(), "1/0");
        let s1g = size(1 << 30);
        assert_eq!(SegmentNo(3).start_lsn(s1g).to_string(), "0/C0000000");
        assert_eq!(SegmentNo(3).end_lsn(s1g).to_string(), "1/0");
        // The last segment of the address space ends at the end of it.
        let last = Lsn(u64::MAX).segment_no(s16);
        assert_eq!(last.start_lsn(s16).to_string(), "FFFFFFFF/FF000000");
        assert_eq!(last.end_lsn(s16), Lsn(u64::MAX));
        assert_eq!(SegmentNo(u64::MAX).start_lsn(s16), Lsn(u64::MAX));
        assert_eq!(SegmentNo(u64::MAX).end_lsn(s16), Lsn(u64::MAX));
        // Every LSN lies within [start, end) of its own segment.
        for lsn in [Lsn(0), Lsn(0x16_B374_D848), Lsn(0xFFFF_FFFF)] {
            let seg = lsn.segment_no(s16);
            assert!(seg.start_lsn(s16) <= lsn && lsn < seg.end_lsn(s16));
            assert_eq!(seg.start_lsn(s16).0 + lsn.segment_offset(s16), lsn.0);
        }
    }
}
