//! The CGMiner API's wire format, which LuxOS and stock Antminer firmware speak too: a JSON
//! request per TCP connection, a JSON reply ended by a NUL byte. Pure: bytes in, values out;
//! the sockets are [`crate::client`]'s and the simulator's.
//!
//! ```text
//! → {"command":"summary+devs","parameter":"..."}
//! ← {"STATUS":[{"STATUS":"S","When":1700000000,"Code":11,"Msg":"Summary","Description":"cgminer 4.11.1"}],"SUMMARY":[{...}],"id":1}\0
//! ```
//!
//! Several reports joined with `+` come back as one object keyed by command, each holding a
//! one-element array with that command's own reply. Replies are read leniently where firmware
//! is known to be sloppy (a missing NUL, trailing whitespace, Antminer's `}{` between objects
//! in `stats`), strictly everywhere else: a reply that is not what it claims is an error,
//! never a guess.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// The API's TCP port.
pub const PORT: u16 = 4028;
/// The longest reply read; `stats` on a three-chain Antminer is a few kilobytes.
pub const MAX_REPLY_BYTES: usize = 1 << 20;
/// The longest command name accepted (the API's own are short words).
const MAX_COMMAND_LEN: usize = 64;

/// What can be wrong with a request or a reply.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiError {
    /// A command name that is not a lowercase word (`+` joins commands; it cannot be in one).
    #[error("invalid command name {0:?}")]
    BadCommand(String),
    /// Not JSON, or JSON without the shape of a reply.
    #[error("malformed reply: {0}")]
    Malformed(String),
    /// The miner answered with an error status (`E` or `F`).
    #[error("miner refused {command}: {msg} (code {code})")]
    Refused {
        command: String,
        code: i64,
        msg: String,
    },
}

/// A request: one command, or several joined with `+`, and an optional parameter.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    pub command: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parameter: Option<String>,
}

impl Request {
    /// A request for `commands`, joined with `+`. Each must be a lowercase word.
    pub fn new(commands: &[&str], parameter: Option<&str>) -> Result<Request, ApiError> {
        if commands.is_empty() {
            return Err(ApiError::BadCommand(String::new()));
        }
        for command in commands {
            if !is_command_name(command) {
                return Err(ApiError::BadCommand((*command).to_owned()));
            }
        }
        Ok(Request {
            command: commands.join("+"),
            parameter: parameter.map(str::to_owned),
        })
    }

    /// The commands this request asks for.
    pub fn commands(&self) -> Vec<&str> {
        self.command.split('+').collect()
    }

    /// The bytes sent.
    pub fn encode(&self) -> Vec<u8> {
        // Serializing two strings cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Reads a request as a miner does (the simulator). Commands are checked as in
    /// [`Request::new`].
    pub fn decode(bytes: &[u8]) -> Result<Request, ApiError> {
        let text = trim_reply(bytes);
        let request: Request =
            serde_json::from_slice(text).map_err(|e| ApiError::Malformed(e.to_string()))?;
        for command in request.commands() {
            if !is_command_name(command) {
                return Err(ApiError::BadCommand(command.to_owned()));
            }
        }
        Ok(request)
    }
}

fn is_command_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_COMMAND_LEN
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

/// A STATUS letter: success, info, warning, error, fatal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Letter {
    S,
    I,
    W,
    E,
    F,
}

impl Letter {
    /// Whether the command did what was asked (S, I and W do; W with a warning).
    pub fn is_ok(self) -> bool {
        matches!(self, Letter::S | Letter::I | Letter::W)
    }
}

/// The STATUS object every reply carries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    #[serde(rename = "STATUS")]
    pub letter: Letter,
    #[serde(rename = "When", default)]
    pub when: i64,
    #[serde(rename = "Code", default)]
    pub code: i64,
    #[serde(rename = "Msg", default)]
    pub msg: String,
    #[serde(rename = "Description", default)]
    pub description: String,
}

/// Well-known status codes (CGMiner's, kept by LuxOS).
pub mod code {
    pub const POOLS: i64 = 7;
    pub const DEVS: i64 = 9;
    pub const SUMMARY: i64 = 11;
    pub const INVALID_COMMAND: i64 = 14;
    pub const ACCESS_DENIED: i64 = 45;
    pub const STATS: i64 = 70;
    /// LuxOS: another session holds the miner.
    pub const SESSION_HELD: i64 = 402;
}

/// One command's reply: its status and its sections (`SUMMARY`, `DEVS`, `POWER`, ...).
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    pub status: Status,
    /// Every key but `STATUS` and `id`.
    pub sections: Map<String, Value>,
}

impl Reply {
    /// A success reply, as the simulator writes it.
    pub fn ok(code: i64, msg: &str, when: i64, sections: Map<String, Value>) -> Reply {
        Reply {
            status: Status {
                letter: Letter::S,
                when,
                code,
                msg: msg.to_owned(),
                description: "wattmesh-sim".to_owned(),
            },
            sections,
        }
    }

    /// An error reply.
    pub fn error(code: i64, msg: &str, when: i64) -> Reply {
        Reply {
            status: Status {
                letter: Letter::E,
                when,
                code,
                msg: msg.to_owned(),
                description: "wattmesh-sim".to_owned(),
            },
            sections: Map::new(),
        }
    }

    /// The reply as a JSON object (without the NUL).
    pub fn to_value(&self) -> Value {
        let mut object = self.sections.clone();
        object.insert(
            "STATUS".into(),
            Value::Array(vec![serde_json::to_value(&self.status).unwrap_or_default()]),
        );
        object.insert("id".into(), Value::from(1));
        Value::Object(object)
    }

    /// The first element of section `name` (most sections are one-element arrays).
    pub fn first(&self, name: &str) -> Option<&Map<String, Value>> {
        self.sections.get(name)?.as_array()?.first()?.as_object()
    }

    /// This reply, or the miner's refusal as an error.
    pub fn into_ok(self, command: &str) -> Result<Reply, ApiError> {
        if self.status.letter.is_ok() {
            Ok(self)
        } else {
            Err(ApiError::Refused {
                command: command.to_owned(),
                code: self.status.code,
                msg: self.status.msg,
            })
        }
    }
}

/// Writes a reply for `commands` as a miner does: one command's reply as is; several as an
/// object keyed by command. Ends with the NUL.
pub fn encode_replies(commands: &[&str], replies: Vec<Reply>) -> Vec<u8> {
    let value = if let [one] = replies.as_slice() {
        one.to_value()
    } else {
        let mut object = Map::new();
        for (command, reply) in commands.iter().zip(replies) {
            object.insert((*command).to_owned(), Value::Array(vec![reply.to_value()]));
        }
        object.insert("id".into(), Value::from(1));
        Value::Object(object)
    };
    let mut bytes = serde_json::to_vec(&value).unwrap_or_default();
    bytes.push(0);
    bytes
}

/// Reads the reply to `request`: one [`Reply`] per command, in the request's order.
pub fn decode_replies(request: &Request, bytes: &[u8]) -> Result<Vec<Reply>, ApiError> {
    let value = parse_lenient(bytes)?;
    let commands = request.commands();
    if let [command] = commands.as_slice() {
        return Ok(vec![reply_of(command, value)?]);
    }
    let Value::Object(mut object) = value else {
        return Err(ApiError::Malformed(
            "a joined reply is not an object".into(),
        ));
    };
    // A miner that refuses the whole joined request answers with one STATUS at the top.
    if object.contains_key("STATUS") {
        let reply = reply_of(&request.command, Value::Object(object))?;
        return Err(reply
            .into_ok(&request.command)
            .err()
            .unwrap_or_else(|| ApiError::Malformed("a joined request got a single reply".into())));
    }
    commands
        .iter()
        .map(|command| {
            let inner = object
                .remove(*command)
                .ok_or_else(|| ApiError::Malformed(format!("no reply for {command}")))?;
            let inner = match inner {
                Value::Array(mut items) if items.len() == 1 => items.remove(0),
                other => other,
            };
            reply_of(command, inner)
        })
        .collect()
}

/// The replies of a joined request by command name.
pub fn by_command(request: &Request, replies: Vec<Reply>) -> BTreeMap<String, Reply> {
    request
        .commands()
        .into_iter()
        .map(str::to_owned)
        .zip(replies)
        .collect()
}

fn reply_of(command: &str, value: Value) -> Result<Reply, ApiError> {
    let Value::Object(mut object) = value else {
        return Err(ApiError::Malformed(format!(
            "the reply to {command} is not an object"
        )));
    };
    let status = object
        .remove("STATUS")
        .ok_or_else(|| ApiError::Malformed(format!("the reply to {command} has no STATUS")))?;
    let status = match status {
        Value::Array(mut items) if !items.is_empty() => items.swap_remove(0),
        other => other,
    };
    let status: Status = serde_json::from_value(status)
        .map_err(|e| ApiError::Malformed(format!("the STATUS of {command}: {e}")))?;
    object.remove("id");
    Ok(Reply {
        status,
        sections: object,
    })
}

/// The reply's JSON without the NUL and the whitespace around it.
fn trim_reply(bytes: &[u8]) -> &[u8] {
    let end = bytes
        .iter()
        .rposition(|&b| b != 0 && !b.is_ascii_whitespace())
        .map_or(0, |i| i + 1);
    let start = bytes
        .iter()
        .position(|&b| !b.is_ascii_whitespace())
        .unwrap_or(end)
        .min(end);
    &bytes[start..end]
}

/// Parses a reply, repairing the one defect stock firmware is known for: Antminer's `stats`
/// writes `}{` between the objects of an array.
fn parse_lenient(bytes: &[u8]) -> Result<Value, ApiError> {
    let text = trim_reply(bytes);
    if text.is_empty() {
        return Err(ApiError::Malformed("empty reply".into()));
    }
    match serde_json::from_slice(text) {
        Ok(value) => Ok(value),
        Err(first) => {
            let repaired = String::from_utf8_lossy(text).replace("}{", "},{");
            serde_json::from_str(&repaired).map_err(|_| ApiError::Malformed(first.to_string()))
        }
    }
}

/// A number in a section, accepting the strings some firmware writes numbers as.
pub fn number(section: &Map<String, Value>, key: &str) -> Option<f64> {
    match section.get(key)? {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// The miner's summary, in the units we use whatever the firmware reports.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Summary {
    pub elapsed_s: f64,
    /// Average since start, TH/s.
    pub ths_av: f64,
    /// Over the last 5 s, TH/s: what a curtailment shows first.
    pub ths_5s: f64,
    pub accepted: f64,
    pub rejected: f64,
    pub hardware_errors: f64,
}

impl Summary {
    /// Reads a `summary` reply: CGMiner's `MHS` keys or Antminer's `GHS` ones.
    pub fn from_reply(reply: &Reply) -> Result<Summary, ApiError> {
        let s = reply
            .first("SUMMARY")
            .ok_or_else(|| ApiError::Malformed("no SUMMARY section".into()))?;
        let rate = |suffix: &str| -> Option<f64> {
            number(s, &format!("MHS {suffix}"))
                .map(|mhs| mhs / 1e6)
                .or_else(|| number(s, &format!("GHS {suffix}")).map(|ghs| ghs / 1e3))
        };
        Ok(Summary {
            elapsed_s: number(s, "Elapsed").unwrap_or(0.0),
            ths_av: rate("av")
                .ok_or_else(|| ApiError::Malformed("SUMMARY has no average hashrate".into()))?,
            ths_5s: rate("5s").or_else(|| rate("av")).unwrap_or(0.0),
            accepted: number(s, "Accepted").unwrap_or(0.0),
            rejected: number(s, "Rejected").unwrap_or(0.0),
            hardware_errors: number(s, "Hardware Errors").unwrap_or(0.0),
        })
    }
}

/// LuxOS `power`: the unit's draw.
pub fn watts(reply: &Reply) -> Result<f64, ApiError> {
    reply
        .first("POWER")
        .and_then(|p| number(p, "Watts"))
        .ok_or_else(|| ApiError::Malformed("no POWER.Watts".into()))
}

/// LuxOS `logon`: the session id.
pub fn session_id(reply: &Reply) -> Result<String, ApiError> {
    reply
        .first("SESSION")
        .and_then(|s| s.get("SessionID"))
        .and_then(Value::as_str)
        .filter(|id| !id.is_empty())
        .map(str::to_owned)
        .ok_or_else(|| ApiError::Malformed("no SESSION.SessionID".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// FACTS.md's summary reply, byte for byte as a miner sends it.
    const SUMMARY: &[u8] = b"{\"STATUS\":[{\"STATUS\":\"S\",\"When\":1700000000,\"Code\":11,\"Msg\":\"Summary\",\"Description\":\"cgminer 4.11.1\"}],\"SUMMARY\":[{\"Elapsed\":3600,\"MHS av\":140000000.0,\"MHS 5s\":139500000.0,\"Accepted\":1200,\"Rejected\":3,\"Hardware Errors\":5,\"Best Share\":123456}],\"id\":1}\0";

    #[test]
    fn requests_join_commands_and_refuse_bad_names() {
        let r = Request::new(&["summary", "devs"], None).unwrap();
        assert_eq!(r.encode(), br#"{"command":"summary+devs"}"#);
        let r = Request::new(&["curtail"], Some("abc,sleep")).unwrap();
        assert_eq!(
            r.encode(),
            br#"{"command":"curtail","parameter":"abc,sleep"}"#
        );
        for bad in ["", "Summary", "sum mary", "a+b", "x\0", &"a".repeat(65)] {
            assert!(
                matches!(Request::new(&[bad], None), Err(ApiError::BadCommand(_))),
                "{bad:?}"
            );
        }
        assert!(Request::new(&[], None).is_err());
        assert_eq!(
            Request::decode(b"{\"command\":\"summary+pools\"}\0")
                .unwrap()
                .commands(),
            ["summary", "pools"]
        );
    }

    #[test]
    fn reads_facts_summary() {
        let request = Request::new(&["summary"], None).unwrap();
        let replies = decode_replies(&request, SUMMARY).unwrap();
        assert_eq!(replies[0].status.code, code::SUMMARY);
        let s = Summary::from_reply(&replies[0]).unwrap();
        assert_eq!(s.ths_av, 140.0);
        assert_eq!(s.ths_5s, 139.5);
        assert_eq!(
            (s.accepted, s.rejected, s.hardware_errors),
            (1200.0, 3.0, 5.0)
        );
    }

    #[test]
    fn reads_antminer_ghs_and_numbers_as_strings() {
        let bytes = br#"{"STATUS":[{"STATUS":"S","Code":11,"Msg":"Summary"}],"SUMMARY":[{"Elapsed":"60","GHS av":"200000.5","GHS 5s":190000}],"id":1}"#;
        let request = Request::new(&["summary"], None).unwrap();
        let s = Summary::from_reply(&decode_replies(&request, bytes).unwrap()[0]).unwrap();
        assert_eq!(s.ths_av, 200.0005);
        assert_eq!(s.ths_5s, 190.0);
        assert_eq!(s.elapsed_s, 60.0);
    }

    #[test]
    fn joined_replies_round_trip_in_request_order() {
        let request = Request::new(&["power", "summary"], None).unwrap();
        let mut power = Map::new();
        power.insert("POWER".into(), serde_json::json!([{"Watts": 3210}]));
        let mut summary = Map::new();
        summary.insert(
            "SUMMARY".into(),
            serde_json::json!([{"MHS av": 1e8, "MHS 5s": 1e8}]),
        );
        let bytes = encode_replies(
            &request.commands(),
            vec![
                Reply::ok(300, "Power", 1, power),
                Reply::ok(code::SUMMARY, "Summary", 1, summary),
            ],
        );
        assert_eq!(bytes.last(), Some(&0));
        let replies = decode_replies(&request, &bytes).unwrap();
        assert_eq!(watts(&replies[0]).unwrap(), 3210.0);
        assert_eq!(Summary::from_reply(&replies[1]).unwrap().ths_av, 100.0);
        let named = by_command(&request, replies);
        assert!(named.contains_key("power") && named.contains_key("summary"));
    }

    #[test]
    fn antminer_stats_with_glued_objects_is_repaired() {
        let bytes = br#"{"STATUS":[{"STATUS":"S","Code":70,"Msg":"CGMiner stats"}],"STATS":[{"Type":"Antminer S19 XP"}{"chain_rate1":"46000","temp2_1":65,"fan1":4200}],"id":1}"#;
        let request = Request::new(&["stats"], None).unwrap();
        let reply = &decode_replies(&request, bytes).unwrap()[0];
        let stats = reply.sections["STATS"].as_array().unwrap();
        assert_eq!(stats.len(), 2);
        assert_eq!(
            number(stats[1].as_object().unwrap(), "chain_rate1"),
            Some(46000.0)
        );
    }

    #[test]
    fn refusals_carry_code_and_message() {
        let bytes = br#"{"STATUS":[{"STATUS":"E","When":1,"Code":402,"Msg":"Another session is active"}],"id":1}"#;
        let request = Request::new(&["logon"], None).unwrap();
        let reply = decode_replies(&request, bytes).unwrap().remove(0);
        assert_eq!(
            reply.into_ok("logon"),
            Err(ApiError::Refused {
                command: "logon".into(),
                code: code::SESSION_HELD,
                msg: "Another session is active".into()
            })
        );
        // A joined request refused as a whole.
        let request = Request::new(&["summary", "bogus"], None).unwrap();
        let bytes = br#"{"STATUS":[{"STATUS":"E","Code":14,"Msg":"Invalid command"}],"id":1}"#;
        assert!(matches!(
            decode_replies(&request, bytes),
            Err(ApiError::Refused { code: 14, .. })
        ));
    }

    /// Every broken reply is an error, never a panic or a guess.
    #[test]
    fn broken_replies() {
        let one = Request::new(&["summary"], None).unwrap();
        let two = Request::new(&["summary", "devs"], None).unwrap();
        let cases: &[(&str, &Request, &[u8])] = &[
            ("empty", &one, b""),
            ("only NUL", &one, b"\0"),
            ("truncated", &one, &SUMMARY[..40]),
            ("not JSON", &one, b"hello\0"),
            ("array", &one, b"[1,2]\0"),
            ("no STATUS", &one, br#"{"SUMMARY":[]}"#),
            ("STATUS of the wrong shape", &one, br#"{"STATUS":"S"}"#),
            ("unknown letter", &one, br#"{"STATUS":[{"STATUS":"Z"}]}"#),
            (
                "joined, one missing",
                &two,
                br#"{"summary":[{"STATUS":[{"STATUS":"S"}]}],"id":1}"#,
            ),
            ("joined, not an object", &two, b"[]"),
        ];
        for (name, request, bytes) in cases {
            assert!(
                matches!(decode_replies(request, bytes), Err(ApiError::Malformed(_))),
                "{name}: {:?}",
                decode_replies(request, bytes)
            );
        }
        let no_summary = decode_replies(&one, br#"{"STATUS":[{"STATUS":"S"}]}"#).unwrap();
        assert!(Summary::from_reply(&no_summary[0]).is_err());
        assert!(watts(&no_summary[0]).is_err());
        assert!(session_id(&no_summary[0]).is_err());
    }
}
