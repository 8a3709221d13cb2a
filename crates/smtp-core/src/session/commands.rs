//! Reading a client command line, the same in both directions (DESIGN.md rule 2): the line
//! was found within its limit by the line reader; here it is logged, its CRLF checked, parsed
//! with nom and held to its verb's length limit. What is refused gets the reply to send.

use std::time::Instant;

use super::{Conn, ReplyTo, Timeouts};
use crate::command::{parse_command, Command, CommandError};
use crate::line::{LineEvent, MAX_COMMAND_LINE};
use crate::timer::Timer;

impl Conn {
    /// The command on a client line, or the reply refusing it (a protocol error).
    pub(crate) fn read_command(&mut self, event: LineEvent) -> Result<Command, &'static str> {
        self.replying_to = ReplyTo::Invalid;
        let LineEvent::Line { line, crlf } = event else {
            self.log_command(b"[line too long]");
            return Err("500 5.5.2 Line too long");
        };
        self.log_command(&line);
        if !crlf {
            // A bare LF is how SMTP smuggling starts; commands must end in CRLF.
            return Err("500 5.5.2 Bare line feed not allowed");
        }
        self.commands_seen += 1;
        let cmd = parse_command(&line);
        if let Ok(cmd) = &cmd {
            self.replying_to = ReplyTo::from(cmd.verb());
        }
        match cmd {
            Ok(cmd) if line.len() + 2 > cmd.max_line_len() => Err("500 5.5.2 Line too long"),
            Ok(cmd) => Ok(cmd),
            Err(_) if line.len() + 2 > MAX_COMMAND_LINE => Err("500 5.5.2 Line too long"),
            Err(CommandError::Unknown) => Err("500 5.5.1 Command unrecognized"),
            Err(CommandError::Syntax(_)) => {
                Err("501 5.5.4 Syntax error in parameters or arguments")
            }
            Err(CommandError::Parameter(_)) => Err("501 5.5.4 Invalid parameter"),
        }
    }

    /// Wait for the client's next command: `greeting` before its first one, then `command`.
    pub(crate) fn wait_for_command(&mut self, timeouts: &Timeouts, now: Instant) {
        let wait = if self.commands_seen == 0 {
            timeouts.greeting
        } else {
            timeouts.command
        };
        self.timers.set(Timer::Client, now + wait);
    }
}
