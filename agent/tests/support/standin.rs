//! A controller stand-in for the agent's controller-mode tests: it answers check-ins (`hold`
//! unless told another `desired`, next in 1 s; or holds them unanswered, a dead link) with a `Date` header `offset_secs` away from the real time, acknowledges every
//! event and keeps what the agent sent, decoded as the real controller decodes it
//! ([`CheckinRequest`]).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use fleet_config::protocol::{CheckinRequest, DeviceEvent};

#[derive(Default)]
pub struct Seen {
    /// Check-ins answered.
    pub checkins: u64,
    /// Every event received, in arrival order (resent ones once).
    pub events: Vec<DeviceEvent>,
    /// Seconds the `Date` header is off the real time.
    pub offset_secs: i64,
    /// Answer this many more check-ins with 503 (an outage).
    pub fail_next: u64,
    /// The `desired` of every answer, as JSON; `None`: hold.
    pub desired: Option<String>,
    /// The phase each answered check-in reported, in order.
    pub phases: Vec<String>,
    /// Hold every check-in unanswered while set (a dead link: nothing comes back).
    pub hang: bool,
    /// Check-ins being held unanswered now.
    pub hanging: u64,
}

pub struct Controller {
    pub url: String,
    pub seen: Arc<Mutex<Seen>>,
}

impl Controller {
    pub fn start() -> Controller {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let seen = Arc::new(Mutex::new(Seen::default()));
        let shared = seen.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let shared = shared.clone();
                std::thread::spawn(move || answer(stream, &shared));
            }
        });
        Controller { url, seen }
    }

    pub fn with<T>(&self, f: impl FnOnce(&mut Seen) -> T) -> T {
        f(&mut self.seen.lock().expect("lock"))
    }
}

fn answer(stream: std::net::TcpStream, seen: &Mutex<Seen>) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut len = 0usize;
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    loop {
        let mut line = String::new();
        reader.read_line(&mut line)?;
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((k, v)) = l.split_once(':') {
            if k.eq_ignore_ascii_case("content-length") {
                len = v.trim().parse().unwrap_or(0);
            }
        }
    }
    let mut body = vec![0u8; len];
    reader.read_exact(&mut body)?;
    if seen.lock().expect("lock").hang {
        seen.lock().expect("lock").hanging += 1;
        while seen.lock().expect("lock").hang {
            std::thread::sleep(Duration::from_millis(20));
        }
        seen.lock().expect("lock").hanging -= 1;
    }
    let mut st = seen.lock().expect("lock");
    let (status, reply) = if !request_line.contains("/api/v1/checkin") {
        ("404 Not Found", "{}".to_string())
    } else if st.fail_next > 0 {
        st.fail_next -= 1;
        (
            "503 Service Unavailable",
            "{\"error\":\"down\"}".to_string(),
        )
    } else {
        let req: CheckinRequest = serde_json::from_slice(&body).expect("a valid check-in");
        st.checkins += 1;
        let phase = serde_json::to_value(req.phase).unwrap_or_default();
        st.phases
            .push(phase.as_str().unwrap_or_default().to_owned());
        for e in req.events {
            if !st.events.iter().any(|s| s.seq == e.seq) {
                st.events.push(e);
            }
        }
        let acked = st.events.iter().map(|e| e.seq).max().unwrap_or(0);
        (
            "200 OK",
            format!(
                "{{\"desired\":{},\"emergency_stop\":false,\"safe_mode\":false,\"acked_seq\":{acked},\"next_checkin_secs\":1}}",
                st.desired.as_deref().unwrap_or("{\"action\":\"hold\"}")
            ),
        )
    };
    let now = SystemTime::now();
    let date = if st.offset_secs >= 0 {
        now + Duration::from_secs(st.offset_secs as u64)
    } else {
        now - Duration::from_secs(st.offset_secs.unsigned_abs())
    };
    drop(st);
    let mut out = stream;
    write!(
        out,
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nDate: {}\r\nConnection: close\r\n\r\n{reply}",
        reply.len(),
        httpdate::fmt_http_date(date)
    )?;
    out.flush()
}
