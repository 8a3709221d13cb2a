//! The DATA reframer (RFC 5321 §4.1.1.4, §4.5.2): turns what a client sends after `354` into
//! canonical SMTP for the backend. End-of-data is CRLF `.` CRLF and nothing else; bare CR, bare
//! LF and NUL never reach the backend; dot-stuffing is carried exactly; no line is longer than
//! 998 octets + CRLF (RFC 5322 §2.1.1).
//!
//! The legacy backend trusts us and may have every line-ending bug of its era, so the one
//! end-of-data it sees must be the one we found, and no other byte sequence may look like one to
//! a lenient parser ("SMTP smuggling": `\n.\n`, `\n.\r\n`, `\r\n.\n`, `\r.\r\n`, `\r\n.\r`, with
//! or without NULs). Nor may a line be longer than the 1000-octet buffer such a server reads
//! lines into: it would split the line there, and a `.` CRLF after the split would end the
//! message early and run the rest as commands. Long lines are folded or the message refused
//! ([`LongLines`]).
//!
//! The body's first line must not continue the header above it either (RFC 5322 §2.2.3): one
//! that starts with white space gets an empty line before it, so that the Received header at
//! the top, ours or the backend's own, ends where its writer ended it.
//!
//! The reframer is a byte-level state machine that keeps a few bytes of state between chunks: a
//! pending CR (is it the start of a CRLF?), whether the current line may be the end of data,
//! whether the output line so far is a lone `.` that may still need stuffing, and how long the
//! output line is. Runs of ordinary bytes, including whole ordinary and empty lines, are found
//! with `memchr3`, and in long runs checked 64 octets at a time with vector instructions, then
//! copied in pieces of 2 KiB (see `COPY_PIECE`), so a clean message costs about one scan and
//! one copy.
//!
//! The output is a function of the input bytes only, never of how they were split into chunks:
//! every decision that depends on the next byte waits for it.

use bytes::BytesMut;
use memchr::memchr3;

#[cfg(test)]
mod proptests;
#[cfg(test)]
mod tests;

const CR: u8 = b'\r';
const LF: u8 = b'\n';
const NUL: u8 = 0;

/// The longest line the backend may receive, CRLF excluded: RFC 5322 §2.1.1 ("MUST be no more
/// than 998 characters"), RFC 5321 §4.5.3.1.6 (1000 octets with the CRLF). Legacy servers read
/// lines into buffers of that size and split anything longer where it does not end. RFC 5321
/// does not count a dot added for transparency (§4.5.2); we do, because the backend's buffer
/// holds it.
pub const MAX_LINE: usize = 998;

/// `policy.bare_newlines`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BareNewlines {
    /// Refuse the message (`550 5.6.11`) once the real end of data arrives.
    Reject,
    /// Turn bare LF / bare CR into CRLF, drop NUL, dot-stuff any `.` line that creates.
    Normalize,
}

/// `policy.long_lines`: what to do with a body line longer than [`MAX_LINE`] octets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LongLines {
    /// Insert CRLF + space before the octet that would be the 999th on its output line, as
    /// Postfix's smtp client does: the continuation starts with a space, so it can never be
    /// taken for a `.` line.
    Fold,
    /// Refuse the message (`550 5.6.0`) once the real end of data arrives.
    Reject,
}

/// Why a message is refused; once set, no more output is produced for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Violation {
    /// Bare LF or bare CR under `Reject`.
    BareNewline,
    /// A NUL byte under `Reject`.
    Nul,
    /// More than `max_size` octets.
    TooBig,
    /// A line longer than [`MAX_LINE`] octets under [`LongLines::Reject`].
    LongLine,
}

impl Violation {
    /// The policy refusal's metric reason and the reply after the client's end of data
    /// (SPEC §4), the same in both directions.
    pub fn refusal(self) -> (crate::session::Refusal, &'static str) {
        match self {
            Violation::BareNewline => (
                crate::session::Refusal::BareNewline,
                "550 5.6.11 Bare line feed or carriage return not allowed",
            ),
            Violation::Nul => (
                crate::session::Refusal::NulByte,
                "550 5.6.11 NUL character not allowed",
            ),
            Violation::LongLine => (
                crate::session::Refusal::LongLine,
                "550 5.6.0 Message has lines longer than 998 octets",
            ),
            Violation::TooBig => (
                crate::session::Refusal::MessageSize,
                "552 5.3.4 Message size exceeds fixed maximum message size",
            ),
        }
    }
}

/// Result of one [`Reframer::feed`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fed {
    /// Input bytes consumed. Less than the input only when the end of data was found: the
    /// rest belongs to the command stream.
    pub consumed: usize,
    /// The end of data (CRLF.CRLF) was consumed, in this call or an earlier one.
    pub finished: bool,
}

/// Where the input stands with respect to a possible end-of-data line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Eod {
    /// The current line cannot be the end of data: it has content already, or the line before it
    /// ended in a bare LF or bare CR (RFC 5321 §4.1.1.4: the end of data is CRLF `.` CRLF).
    No,
    /// At the start of a line whose preceding terminator was a real CRLF, or of the data (the
    /// DATA command's CRLF precedes it).
    LineStart,
    /// A `.` at such a line start. It is held, neither counted nor emitted, until the next bytes
    /// say whether it is the end of data; a CR after it is held with it.
    Dot,
}

/// What the current output line holds so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OutLine {
    /// Nothing since the last CRLF written (or since the start).
    Empty,
    /// A single `.`, not written yet: if the line ends here it must go out as `..` (RFC 5321
    /// §4.5.2), or the backend would take it for the end of data.
    Dot,
    /// Anything else.
    Text,
}

/// Reframes one message body; make a new one for each DATA.
#[derive(Debug)]
pub struct Reframer {
    mode: BareNewlines,
    long_lines: LongLines,
    max_size: u64,
    received: u64,
    violation: Option<Violation>,
    eod: Eod,
    out_line: OutLine,
    /// Octets of the current output line written so far (or held: a line-start `.` counts once
    /// it is written), CRLF excluded; never more than [`MAX_LINE`].
    col: usize,
    /// A CR was consumed; whether it starts a CRLF depends on the next byte, which may be in the
    /// next chunk.
    cr: bool,
    /// Nothing of the first line has been written yet (a held `.` aside): see
    /// [`Reframer::text`].
    first_line: bool,
    finished: bool,
}

impl Reframer {
    /// `max_size`: the most body octets (as received, before the end-of-data line) accepted. It
    /// counts what the client sent: the 3 octets each fold adds are not counted.
    pub fn new(mode: BareNewlines, long_lines: LongLines, max_size: u64) -> Self {
        Self {
            mode,
            long_lines,
            max_size,
            received: 0,
            violation: None,
            eod: Eod::LineStart,
            out_line: OutLine::Empty,
            col: 0,
            cr: false,
            first_line: true,
            finished: false,
        }
    }

    /// Consume client bytes, appending canonical output to `out`. On the end of data, appends
    /// the terminating `.` CRLF unless a violation was found (the output before it always ends
    /// with CRLF or is empty, since only a real CRLF can precede the end of data). After a
    /// violation nothing more is appended, but input is still scanned for the real end of data.
    /// Once finished, nothing more is consumed.
    pub fn feed(&mut self, input: &[u8], out: &mut BytesMut) -> Fed {
        if self.finished {
            return Fed {
                consumed: 0,
                finished: true,
            };
        }
        let mut i = 0;
        while let Some(&b) = input.get(i) {
            if self.cr {
                self.cr = false;
                if b == LF {
                    i += 1;
                    // CRLF `.` CRLF (RFC 5321 §4.1.1.4): the held line was the end of data.
                    if self.eod == Eod::Dot {
                        self.finish(out);
                        return Fed {
                            consumed: i,
                            finished: true,
                        };
                    }
                    self.commit(1);
                    self.real_crlf(out);
                } else {
                    // A bare CR; `b` is looked at again on the next round. A held `.` and CR
                    // turn out to be body.
                    if self.eod == Eod::Dot {
                        self.commit(2);
                    }
                    self.bare_newline(out);
                }
                continue;
            }
            match b {
                CR => {
                    i += 1;
                    if self.eod != Eod::Dot {
                        self.commit(1);
                    }
                    self.cr = true;
                }
                LF => {
                    // LF without CR before it: RFC 5321 §2.3.8 allows CR and LF only as CRLF.
                    i += 1;
                    self.release_dot();
                    self.commit(1);
                    self.bare_newline(out);
                }
                NUL => {
                    i += 1;
                    self.release_dot();
                    self.commit(1);
                    // A NUL is line content: `\r\n\0.\r\n` is not the end of data, even though
                    // the line it leaves after dropping the NUL is a lone `.` (stuffed then).
                    self.eod = Eod::No;
                    if self.mode == BareNewlines::Reject {
                        self.violate(Violation::Nul);
                    }
                }
                b'.' if self.out_line == OutLine::Empty => {
                    // First on its line: the end of data (RFC 5321 §4.1.1.4) if the line began
                    // after a real CRLF, or a lone `.` line that must go out stuffed (§4.5.2).
                    i += 1;
                    if self.eod == Eod::LineStart {
                        self.eod = Eod::Dot;
                    } else {
                        self.commit(1);
                    }
                    self.out_line = OutLine::Dot;
                }
                _ => i = self.text(input, i, out),
            }
        }
        Fed {
            consumed: input.len(),
            finished: false,
        }
    }

    /// Why the message is refused, if it is; the first violation found is kept.
    pub fn violation(&self) -> Option<Violation> {
        self.violation
    }

    /// Octets of body received so far (as the client sent them, end-of-data line excluded).
    pub fn received(&self) -> u64 {
        self.received
    }

    /// Ordinary bytes from `input[start]` (not CR, LF or NUL, and not a `.` that starts an output
    /// line) up to the next byte that needs a decision. Returns where that byte is.
    ///
    /// No output line may pass [`MAX_LINE`] octets (RFC 5322 §2.1.1). Each line end found costs
    /// one comparison; the run stops at the first line that is too long, and that line is folded
    /// (or refused) here, up to its end, so a line of megabytes is still scanned only once.
    fn text(&mut self, input: &[u8], start: usize, out: &mut BytesMut) -> usize {
        self.release_dot();
        self.eod = Eod::No;
        if std::mem::take(&mut self.first_line) && matches!(input.get(start), Some(b' ' | b'\t')) {
            // The message's first line starts with white space (after the backend removes a
            // stuffed `.`): it would continue the header before it (RFC 5322 §2.2.3), the
            // Received header we prepend (the hop the backend trusts) or the backend's own. An
            // empty line first ends that header section, and the client's lines become body.
            // Not counted against `max_size`, as a fold is not.
            self.emit(out, b"\r\n");
        }
        if self.out_line == OutLine::Dot {
            self.emit(out, b".");
            self.col = 1;
        }
        self.out_line = OutLine::Text;
        let rest = &input[start..];
        // Where in `rest` the octet that would be the 999th of the current line is.
        let mut limit = MAX_LINE - self.col;
        let mut len = rest.len();
        let mut from = 0;
        // A CRLF that ends a line short enough and is followed by a byte that starts an ordinary
        // line (not `.`, LF or NUL; a CR, an empty line, is looked at next) needs no decision,
        // so the run goes on through it: one copy for many lines. Once the run has passed one
        // line end, whole blocks of such lines are checked at once ([`clean_blocks`]); where
        // that stops, the lines are looked at one at a time again, up to the end of the block
        // that stopped it.
        let mut blocks_from = 1;
        loop {
            if from >= blocks_from {
                let (resume, stop) = clean_blocks(rest, from, &mut limit);
                from = resume;
                blocks_from = stop + BLOCK;
            }
            let Some(k) = memchr3(CR, LF, NUL, &rest[from..]) else {
                break;
            };
            let at = from + k;
            match rest.get(at..at + 3) {
                Some(&[CR, LF, c]) if at <= limit && !matches!(c, LF | NUL | b'.') => {
                    from = at + 2 + usize::from(c != CR);
                    limit = at + 2 + MAX_LINE;
                }
                _ => {
                    len = at;
                    break;
                }
            }
        }
        if len <= limit {
            self.commit_run(&rest[..len], out);
            self.col = MAX_LINE - (limit - len);
        } else {
            // The last line of the run is too long; all of it up to `len` is line content.
            self.commit_run(&rest[..limit], out);
            let mut at = limit;
            while at < len {
                self.long_line(out);
                let next = len.min(at + (MAX_LINE - self.col));
                self.commit_run(&rest[at..next], out);
                self.col += next - at;
                at = next;
            }
        }
        start + len
    }

    /// The current output line has [`MAX_LINE`] octets and another one follows. Folding starts
    /// a continuation line with a space (as Postfix's smtp client does), so it can never begin
    /// with a `.`; the 3 octets added are not counted against `max_size`, which counts what the
    /// client sent.
    fn long_line(&mut self, out: &mut BytesMut) {
        match self.long_lines {
            LongLines::Fold => {
                self.emit(out, b"\r\n ");
                self.col = 1;
            }
            LongLines::Reject => {
                self.violate(Violation::LongLine);
                // Nothing more is written; the line count only has to keep the scan moving.
                self.col = 0;
            }
        }
    }

    /// Counts a run and writes what of it fits under `max_size`, exactly as if it had been fed
    /// byte by byte: a CRLF is written with its LF, so a CR whose LF does not fit is not.
    fn commit_run(&mut self, run: &[u8], out: &mut BytesMut) {
        let before = self.received;
        let n = u64::try_from(run.len()).unwrap_or(u64::MAX);
        self.received = before.saturating_add(n);
        if self.violation.is_some() {
            return;
        }
        if self.received <= self.max_size {
            copy_run(run, out);
            return;
        }
        let fit = usize::try_from(self.max_size.saturating_sub(before)).unwrap_or(run.len());
        let mut kept = run.get(..fit).unwrap_or(run);
        if let [head @ .., CR] = kept {
            kept = head;
        }
        copy_run(kept, out);
        self.violation = Some(Violation::TooBig);
    }

    /// A CRLF from the client that does not end the data.
    fn real_crlf(&mut self, out: &mut BytesMut) {
        self.end_output_line(out);
        self.eod = Eod::LineStart;
    }

    /// A bare LF or bare CR: refused, or written as CRLF. Either way the next line cannot be the
    /// end of data, since its preceding terminator was not a real CRLF.
    fn bare_newline(&mut self, out: &mut BytesMut) {
        self.eod = Eod::No;
        match self.mode {
            BareNewlines::Reject => {
                self.violate(Violation::BareNewline);
                self.out_line = OutLine::Empty;
                self.col = 0;
            }
            BareNewlines::Normalize => self.end_output_line(out),
        }
    }

    /// Writes the CRLF that ends the current output line; a line that is a lone `.` but not the
    /// end of data goes out dot-stuffed (RFC 5321 §4.5.2), so the backend sees exactly one
    /// end of data per message.
    fn end_output_line(&mut self, out: &mut BytesMut) {
        let line: &[u8] = if self.out_line == OutLine::Dot {
            b"..\r\n"
        } else {
            b"\r\n"
        };
        self.emit(out, line);
        self.out_line = OutLine::Empty;
        self.col = 0;
        self.first_line = false;
    }

    /// The held line-start `.` is body after all: count it (its output stays in `out_line`).
    fn release_dot(&mut self) {
        if self.eod == Eod::Dot {
            self.eod = Eod::No;
            self.commit(1);
        }
    }

    fn finish(&mut self, out: &mut BytesMut) {
        self.emit(out, b".\r\n");
        self.finished = true;
    }

    /// Counts body octets as the client sent them; past `max_size` the message is refused
    /// (the limit advertised with SIZE, RFC 1870; RFC 5321 §4.5.3.1.7 lets a server set one).
    fn commit(&mut self, n: u64) {
        self.received = self.received.saturating_add(n);
        if self.received > self.max_size {
            self.violate(Violation::TooBig);
        }
    }

    fn violate(&mut self, v: Violation) {
        self.violation.get_or_insert(v);
    }

    fn emit(&self, out: &mut BytesMut, bytes: &[u8]) {
        if self.violation.is_none() {
            out.extend_from_slice(bytes);
        }
    }
}

/// The longest piece [`copy_run`] copies with one call.
///
/// glibc (2.36, Debian 12's) copies from 2,112 octets up to its `rep_movsb_stop_threshold`
/// (512 KiB on this machine) with `rep movsb` on a CPU with fast short `rep movsb` (AMD Zen 3
/// and later, Intel Ice Lake and later), and shorter copies with vector registers. On AMD,
/// `rep movsb` is slow when the source and the destination lie close to each other modulo 4
/// KiB (glibc bug 30994): a record's plaintext and the backend's buffer, both from the
/// allocator, often do. On this machine's Zen 3, in workload Bfast, the body's copy took more
/// of the sidecar's core than AES-GCM did; in pieces, every copy together took an eighth of
/// that (`docs/performance-log.md`, 2026-12-05).
const COPY_PIECE: usize = 2048;

/// Append `run` to `out` in pieces of [`COPY_PIECE`] octets, each below glibc's threshold for
/// `rep movsb`: its vector copy does not depend on where the two buffers lie. Where `rep
/// movsb` is fast the pieces cost a call each, a few per 16 KiB record (measured only on this
/// machine's Zen 3, where the in-memory body bench gained 7%).
fn copy_run(run: &[u8], out: &mut BytesMut) {
    out.reserve(run.len());
    for piece in run.chunks(COPY_PIECE) {
        out.extend_from_slice(piece);
    }
}

/// The octets [`clean_blocks`] looks at together.
const BLOCK: usize = 64;

/// Whether every octet of a block (`w[1..]`, with `w[0]` the octet before it) is one the text
/// loop of [`Reframer::text`] lets through: no NUL, every LF after a CR and every CR before an
/// LF (the LF of a CR at the end is the next block's first octet), and no line that starts with
/// `.`; and whether the block holds a CR. Written as one pass of octet-wise operations over the
/// whole block, which the compiler turns into vector instructions (no `unsafe` here: the crate
/// forbids it).
#[inline(always)]
fn block_is_clean(w: &[u8; BLOCK + 1]) -> (bool, bool) {
    let (mut bad, mut any_cr) = (0u8, 0u8);
    for i in 0..BLOCK {
        let (p, c) = (w[i], w[i + 1]);
        bad |= u8::from(c == NUL)
            | (u8::from(c == LF) ^ u8::from(p == CR))
            | (u8::from(p == LF) & u8::from(c == b'.'));
        any_cr |= u8::from(c == CR);
    }
    (bad == 0, any_cr != 0)
}

/// The text loop of [`Reframer::text`] over whole [`BLOCK`]s of `rest` from `from` (`from` >
/// 0): it passes a block when every CR, LF and NUL in it is part of a CRLF followed by an octet
/// that starts an ordinary or empty line, as that loop would, and when no line in it can be
/// longer than `limit` allows. Returns where that loop must go on: the last CR passed, if any,
/// with `limit` set to one its line end is within (the loop then checks its CRLF and takes its
/// exact line end), or `from`; and where the block scan stopped.
///
/// Where exactly a block's CRs are is not computed: the first is taken to be at the end of the
/// block for the length check, the last at its start for the next limit. Both err on the safe
/// side, and a block refused by them goes through the exact loop instead.
fn clean_blocks(rest: &[u8], from: usize, limit: &mut usize) -> (usize, usize) {
    // The limit the last CR passed was checked against.
    let mut checked = None;
    let mut next_limit = *limit;
    let mut at = from;
    while let Some(w) = at.checked_sub(1).and_then(|p| rest.get(p..at + BLOCK)) {
        let Ok(w) = <&[u8; BLOCK + 1]>::try_from(w) else {
            break;
        };
        let (clean, has_cr) = block_is_clean(w);
        if !clean || (has_cr && at + BLOCK - 1 > next_limit) {
            break;
        }
        if has_cr {
            checked = Some(next_limit);
            next_limit = at + 2 + MAX_LINE;
        }
        at += BLOCK;
    }
    let resume = match checked {
        Some(checked) => {
            *limit = checked;
            memchr::memrchr(CR, &rest[from..at]).map_or(from, |k| from + k)
        }
        None => from,
    };
    (resume, at)
}
