//! How the text format writes an event's fields: `name=value` after the message, as
//! tracing-subscriber's default does, except that a value which is not one plain token is
//! quoted, with Rust's string escapes. Otherwise a certificate subject or a peer's reply text
//! in a value could carry ` sha1=…` or ` peer=…` and pass for a field of its own to whatever
//! reads the log by `key=value` (JSON is exact either way). Strings recorded as such were
//! quoted already and stay so; numbers, addresses, names and thumbprints stay bare.

use std::cell::RefCell;
use std::fmt::{self, Write as _};

use tracing::field::{Field, Visit};
use tracing_subscriber::field::{MakeVisitor, VisitFmt, VisitOutput};
use tracing_subscriber::fmt::format::Writer;

/// The text format's fields ([`tracing_subscriber::fmt::SubscriberBuilder::fmt_fields`]).
#[derive(Debug, Clone, Copy, Default)]
pub struct TextFields;

impl<'w> MakeVisitor<Writer<'w>> for TextFields {
    type Visitor = TextVisitor<'w>;

    fn make_visitor(&self, writer: Writer<'w>) -> TextVisitor<'w> {
        TextVisitor {
            writer,
            first: true,
            result: Ok(()),
        }
    }
}

pub struct TextVisitor<'w> {
    writer: Writer<'w>,
    first: bool,
    result: fmt::Result,
}

thread_local! {
    /// A value's text, formatted to be looked at before it is written; kept between events.
    static VALUE: RefCell<String> = const { RefCell::new(String::new()) };
}

impl TextVisitor<'_> {
    fn write(&mut self, field: &Field, value: fmt::Arguments<'_>, quote: Quote) {
        // The `log` crate's metadata (rustls logs through it), already in the line's head.
        if self.result.is_err() || field.name().starts_with("log.") {
            return;
        }
        let separator = if std::mem::take(&mut self.first) {
            ""
        } else {
            " "
        };
        // The thread's buffer, unless it is in use: a value whose formatting panicked, and
        // the panic's own line (`log::panic_hook`) logged while it was borrowed.
        self.result = VALUE.with(|buffer| match buffer.try_borrow_mut() {
            Ok(mut text) => self.field(field.name(), separator, &mut text, value, quote),
            Err(_) => self.field(field.name(), separator, &mut String::new(), value, quote),
        });
    }

    fn field(
        &mut self,
        name: &str,
        separator: &str,
        text: &mut String,
        value: fmt::Arguments<'_>,
        quote: Quote,
    ) -> fmt::Result {
        text.clear();
        text.write_fmt(value)?;
        let w = &mut self.writer;
        if name == "message" {
            w.write_str(separator)?;
            return escape_controls(w, text);
        }
        let name = name.strip_prefix("r#").unwrap_or(name);
        write!(w, "{separator}{name}=")?;
        if quote == Quote::Always || !is_token(text) {
            write!(w, "{:?}", text.as_str())
        } else {
            w.write_str(text)
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Quote {
    /// A string value: quoted, as tracing-subscriber's default writes strings.
    Always,
    /// Any other value: quoted only when it is not one plain token.
    Needed,
}

impl Visit for TextVisitor<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.write(field, format_args!("{value}"), Quote::Always);
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        let mut chain = value.to_string();
        let mut source = value.source();
        while let Some(e) = source {
            let _ = write!(chain, ": {e}");
            source = e.source();
        }
        self.write(field, format_args!("{chain}"), Quote::Needed);
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.write(field, format_args!("{value:?}"), Quote::Needed);
    }
}

impl VisitOutput<fmt::Result> for TextVisitor<'_> {
    fn finish(self) -> fmt::Result {
        self.result
    }
}

impl VisitFmt for TextVisitor<'_> {
    fn writer(&mut self) -> &mut dyn fmt::Write {
        &mut self.writer
    }
}

/// A value written bare: printable ASCII without space, `"`, `=` or `\`.
fn is_token(text: &str) -> bool {
    !text.is_empty()
        && text
            .bytes()
            .all(|b| b.is_ascii_graphic() && !matches!(b, b'"' | b'=' | b'\\'))
}

/// The message as it is, but a control character (a line break, a terminal escape) written
/// as its escape.
fn escape_controls(w: &mut Writer<'_>, text: &str) -> fmt::Result {
    let mut rest = text;
    while let Some(at) = rest.find(char::is_control) {
        w.write_str(&rest[..at])?;
        let c = rest[at..].chars().next().unwrap_or_default();
        write!(w, "{}", c.escape_debug())?;
        rest = &rest[at + c.len_utf8()..];
    }
    w.write_str(rest)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::sync::{Arc, Mutex};

    /// The text of one event logged through [`super::TextFields`] as `format` would write it.
    fn line(log: impl FnOnce()) -> String {
        #[derive(Clone, Default)]
        struct Buf(Arc<Mutex<Vec<u8>>>);
        impl std::io::Write for Buf {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let buf = Buf::default();
        let out = buf.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .without_time()
            .with_level(false)
            .with_target(false)
            .fmt_fields(super::TextFields)
            .with_writer(move || out.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, log);
        let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        text
    }

    /// What a peer controls cannot pass for a field: a value with a space, `=`, a quote or
    /// a control character is quoted and escaped; tokens, numbers and strings look as they
    /// did with tracing-subscriber's own fields.
    #[test]
    fn values_that_are_not_one_token_are_quoted() {
        let subject = "CN=evil.test sha1=0123 peer=192.0.2.1:25";
        let reason = String::from("refused: \"550\" \\ \u{1b}[31m\nforged=1");
        let peer: std::net::SocketAddr = "192.0.2.7:40312".parse().unwrap();
        assert_eq!(
            line(|| tracing::info!(
                session = 17u64,
                %peer,
                listener = %"inbound",
                side = "local",
                subject = %subject,
                %reason,
                sha1 = %"AB12",
                empty = %"",
                ok = true,
                "certificate\nforged=2"
            )),
            "certificate\\nforged=2 session=17 peer=192.0.2.7:40312 listener=inbound \
             side=\"local\" subject=\"CN=evil.test sha1=0123 peer=192.0.2.1:25\" \
             reason=\"refused: \\\"550\\\" \\\\ \\u{1b}[31m\\nforged=1\" sha1=AB12 empty=\"\" \
             ok=true\n"
        );
    }

    /// The `log` crate's metadata is left out, as tracing-subscriber's own fields do: rustls
    /// logs through the `log` crate.
    #[test]
    fn log_crate_metadata_is_left_out() {
        assert_eq!(
            line(|| tracing::warn!(log.target = "rustls::conn", log.line = 613u64, "an alert")),
            "an alert\n"
        );
    }

    /// A value whose formatting panics while the thread's buffer is borrowed: the line of the
    /// panic (logged from the panic hook, on the same thread) is still written, with a
    /// buffer of its own, instead of a second panic that would abort the process.
    #[test]
    fn a_line_logged_while_the_buffer_is_in_use_is_written() {
        let text = super::VALUE.with(|buffer| {
            let _held = buffer.borrow_mut();
            line(|| tracing::info!(reason = %"in use", "logged meanwhile"))
        });
        assert_eq!(text, "logged meanwhile reason=\"in use\"\n");
    }
}
