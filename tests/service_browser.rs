//! The web page in a real browser: headless chromium (Debian's `chromium`, which `.ci/run`
//! installs) opens a running run's page and is read over the DevTools protocol: the page shows
//! the run, its loss chart grows as steps arrive on the event stream, and an evaluation asked
//! for on the page shows its scores and sample predictions.

mod service_support;

use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use service::store::{Status, TrainOptions};
use service_support::{Fixture, Serve};
use tungstenite::{Message, WebSocket, stream::MaybeTlsStream};

const CHROMIUM: &str = "/usr/bin/chromium";

/// Headless chromium on one page, killed when dropped.
struct Browser {
    child: Child,
    socket: WebSocket<MaybeTlsStream<TcpStream>>,
    next_id: u64,
    _profile: tempfile::TempDir,
}

impl Browser {
    fn open(url: &str) -> Browser {
        let profile = tempfile::tempdir().unwrap();
        let child = Command::new(CHROMIUM)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                // Containers often have a small /dev/shm.
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--remote-debugging-port=0",
                "--window-size=1200,900",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg(url)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let port = wait_for("chromium's DevTools port", || {
            let text = std::fs::read_to_string(profile.path().join("DevToolsActivePort")).ok()?;
            text.lines().next()?.parse::<u16>().ok()
        });
        let ws_url = wait_for("the page's DevTools target", || {
            let list = reqwest::blocking::get(format!("http://127.0.0.1:{port}/json/list")).ok()?;
            let targets: serde_json::Value = serde_json::from_str(&list.text().ok()?).ok()?;
            targets.as_array()?.iter().find(|t| t["type"] == "page")?["webSocketDebuggerUrl"]
                .as_str()
                .map(String::from)
        });
        let (socket, _) = tungstenite::connect(ws_url).unwrap();
        Browser {
            child,
            socket,
            next_id: 0,
            _profile: profile,
        }
    }

    /// Evaluates `expression` in the page and returns its value.
    fn eval(&mut self, expression: &str) -> serde_json::Value {
        let params = serde_json::json!({ "expression": expression, "returnByValue": true });
        self.call("Runtime.evaluate", params)["result"]["value"].clone()
    }

    /// Calls a DevTools method and returns its result.
    fn call(&mut self, method: &str, params: serde_json::Value) -> serde_json::Value {
        self.next_id += 1;
        let id = self.next_id;
        let request = serde_json::json!({ "id": id, "method": method, "params": params });
        self.socket
            .send(Message::text(request.to_string()))
            .unwrap();
        loop {
            let Message::Text(text) = self.socket.read().unwrap() else {
                continue;
            };
            let reply: serde_json::Value = serde_json::from_str(&text).unwrap();
            if reply["id"] == id {
                return reply["result"].clone();
            }
        }
    }

    /// Waits until `expression` yields something `accept`s.
    fn until(
        &mut self,
        what: &str,
        expression: &str,
        accept: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let started = Instant::now();
        loop {
            let value = self.eval(expression);
            if accept(&value) {
                return value;
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "{what}: still {value} after a minute; the page: {}",
                self.eval("document.body.innerText")
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn wait_for<T>(what: &str, mut probe: impl FnMut() -> Option<T>) -> T {
    let started = Instant::now();
    loop {
        if let Some(value) = probe() {
            return value;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "no {what} after 30 s"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn points(value: &serde_json::Value) -> u64 {
    value.as_str().and_then(|s| s.parse().ok()).unwrap_or(0)
}

#[test]
fn the_page_shows_a_run_and_its_chart_follows_the_steps() {
    if !Path::new(CHROMIUM).is_file() {
        eprintln!(
            "skipped: {CHROMIUM} is not installed (`apt-get install chromium`; .ci/run does)"
        );
        return;
    }
    // Long enough to still be running while the browser watches.
    let fx = Fixture::with_held_out(4000, 16);
    let serve = Serve::start(&fx, &[]);
    let run = fx.submit(&serve, TrainOptions::default());
    let id = run.run.id;
    serve.wait(id, |r| r.last.as_ref().is_some_and(|e| e.step >= 2));

    let mut browser = Browser::open(&format!("{}/#run={id}", serve.client.base()));
    let title = browser.until(
        "the run's heading",
        "document.querySelector('h2')?.textContent",
        |v| v.as_str().is_some_and(|t| t.contains("tiny")),
    );
    assert_eq!(title, format!("Run {id}: tiny"));
    browser.until(
        "the run's status",
        "document.getElementById('run-status')?.textContent",
        |v| v.as_str().is_some_and(|t| t.contains("running")),
    );
    let first = points(&browser.until(
        "points on the loss chart",
        "document.getElementById('loss-chart')?.dataset.points",
        |v| points(v) >= 2,
    ));
    let later = points(&browser.until(
        "the loss chart to grow",
        "document.getElementById('loss-chart')?.dataset.points",
        |v| points(v) > first + 2,
    ));
    assert!(later > first);
    // PALIFORGE_SCREENSHOT_B64=FILE saves the page, base64 PNG, for the README.
    if let Ok(file) = std::env::var("PALIFORGE_SCREENSHOT_B64") {
        browser.until(
            "a longer curve",
            "document.getElementById('loss-chart')?.dataset.points",
            |v| points(v) >= 60,
        );
        let shot = browser.call(
            "Page.captureScreenshot",
            serde_json::json!({"format": "png"}),
        );
        std::fs::write(file, shot["data"].as_str().unwrap()).unwrap();
    }
    let lines = browser.eval("document.querySelectorAll('#loss-chart polyline').length");
    assert!(
        lines.as_u64().is_some_and(|n| n >= 3),
        "the loss and a line per task: {lines}"
    );
    let timeline = browser.eval("document.getElementById('timeline').textContent");
    assert!(
        timeline
            .as_str()
            .is_some_and(|t| t.contains('a') && t.contains('b')),
        "both stages on the timeline: {timeline}"
    );

    // The runs list shows it with its status and progress.
    browser.eval("location.hash = ''");
    browser.until(
        "the run in the list",
        &format!("document.querySelector('tr[data-run-id=\"{id}\"]')?.dataset.status"),
        |v| v == "running",
    );
    serve.client.stop(id).unwrap();
    let stopped = serve.wait(id, |r| r.status.is_settled());
    assert_eq!(stopped.status, Status::Stopped);
    browser.until(
        "the list to show it stopped",
        &format!("document.querySelector('tr[data-run-id=\"{id}\"]')?.dataset.status"),
        |v| v == "stopped",
    );

    // The run's page evaluates its newest checkpoint on request and shows the scores and
    // sample predictions beside their images.
    browser.eval(&format!("location.hash = 'run={id}'"));
    browser.until(
        "the evaluate button",
        "!!document.getElementById('evaluate')",
        |v| v == true,
    );
    browser.eval("document.getElementById('evaluate').click()");
    browser.until(
        "a finished evaluation",
        "document.querySelector('#evaluations .evaluation')?.dataset.status",
        |v| v == "finished",
    );
    let rows = browser.eval(
        "[...document.querySelectorAll('#evaluations table.scores tr')].slice(1).map(r => r.cells[0].textContent)",
    );
    assert_eq!(rows, serde_json::json!(["caption", "vqa"]));
    browser.until(
        "the samples' images to load",
        "[...document.querySelectorAll('#evaluations .sample img')].filter(i => i.complete && i.naturalWidth === 28).length",
        |v| v.as_u64().is_some_and(|n| n >= 2),
    );
}
