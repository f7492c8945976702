//! report.html as a person sees it: headless Chromium draws the sample report; the screenshot
//! must show three charts, each with every arm's own colour, and the DOM must hold the SVG
//! elements and the axis labels. A root test: it installs Debian's chromium when it is missing.
//! One test, so that one Chromium runs at a time and every process left over is its own.

mod common;
#[path = "../../collapse-user/src/bench/report/sample.rs"]
mod sample;

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use collapse::{bench::report, render::series_rgb};
use common::skip::{needs_root_tests, skip_if};
use nix::{
    sys::{
        signal::{Signal, kill},
        wait::{WaitPidFlag, waitpid},
    },
    unistd::Pid,
};
use sample::{TempDir, sample_report};

const WINDOW: (usize, usize) = (1280, 2400);
/// Where the screenshot is left for people to look at.
const SCREENSHOT_COPY: &str = "collapse-report-screenshot.png";
const CHROMIUM_TIMEOUT: Duration = Duration::from_secs(120);

#[test]
fn report_html_draws_its_charts_in_chromium() {
    skip_if!(needs_root_tests());
    let chromium = chromium();
    let dir = TempDir::new("html-chromium");
    let bench = sample_report();
    let files = report::write(&dir.0, &bench).expect("write the sample report");
    let url = format!("file://{}", files.html.display());
    let browser = Browser::new(chromium, &dir.0);

    // The DOM: three SVG charts with lines, dots, axis labels with units and every arm's name.
    let dom = browser.run(&["--dump-dom", &url]);
    assert_eq!(dom.matches("<svg").count(), 3, "{dom}");
    assert!(
        dom.matches("<polyline").count() >= 2 * 2 * bench.arms.len(),
        "lines"
    );
    assert!(dom.matches("<circle").count() >= bench.arms.len(), "dots");
    for text in [
        "Coverage over time",
        "RSS over time",
        "Bloat against speedup",
        "time since the arm started (s)",
        "coverage (% of anon RSS in huge pages)",
        "anon RSS (MiB)",
        "memory overhead against none (MiB of peak RSS)",
        "gain against none (%)",
    ] {
        assert!(dom.contains(text), "{text} missing from the DOM");
    }
    for arm in &bench.arms {
        // The legend of each chart names every arm; the scatter labels its point too.
        let in_texts = dom.matches(&format!(">\n{}\n</text>", arm.name)).count();
        assert!(in_texts >= 4, "{}: {in_texts} texts", arm.name);
    }

    // The screenshot.
    let shot = dir.0.join("screenshot.png");
    browser.run(&[
        &format!("--screenshot={}", shot.display()),
        &format!("--window-size={},{}", WINDOW.0, WINDOW.1),
        &url,
    ]);
    let copy = std::env::temp_dir().join(SCREENSHOT_COPY);
    fs::copy(&shot, &copy).expect("keep a copy of the screenshot");
    eprintln!("report_html: screenshot at {}", copy.display());
    let image = Image::decode(&shot);
    assert_eq!((image.width, image.height), WINDOW, "screenshot size");

    let charts = image.chart_areas();
    assert_eq!(charts.len(), 3, "three white chart areas, found {charts:?}");
    for (i, area) in charts.iter().enumerate() {
        assert!(
            area.bottom < image.height - 1,
            "chart {i} cut off by the window: {area:?}"
        );
        assert!(
            area.bottom - area.top >= 380 && area.right - area.left >= 1000,
            "chart {i} too small: {area:?}"
        );
        let (drawn, colours) = image.ink(area);
        let pixels = (area.right - area.left) * (area.bottom - area.top);
        assert!(
            drawn * 20 >= pixels,
            "chart {i} nearly blank: {drawn} of {pixels} pixels drawn"
        );
        assert!(colours >= 40, "chart {i}: only {colours} colours");
        // Every arm in its own colour: lines in the time charts (far more than the legend's
        // swatch), a dot beside the legend's in the scatter.
        let least = if i < 2 { 400 } else { 150 };
        for arm in &bench.arms {
            let n = image.count_near(area, series_rgb(arm.color));
            assert!(
                n >= least,
                "chart {i}: {} drawn in {} pixels of its colour {:?}, want {least}",
                arm.name,
                n,
                series_rgb(arm.color)
            );
        }
    }
}

/// The chromium binary, installed from Debian's packages when it is missing.
fn chromium() -> PathBuf {
    common::debian::binaries("report_html", "chromium", &["chromium"])
        .pop()
        .expect("chromium")
}

/// Headless Chromium with a profile, config and cache of its own under the test's directory
/// (nothing of the machine's, and no other Chromium it could hand the page to).
struct Browser {
    binary: PathBuf,
    home: PathBuf,
}

impl Browser {
    fn new(binary: PathBuf, dir: &Path) -> Self {
        // Chromium's crash handler double-forks away from its parent; as a subreaper this
        // process inherits it, so that nothing the browser starts can outlive the test unseen.
        // SAFETY: prctl with integer arguments.
        let rc = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
        assert_eq!(rc, 0, "prctl(PR_SET_CHILD_SUBREAPER)");
        Self {
            binary,
            home: dir.join("chromium-home"),
        }
    }

    /// Runs chromium with `args` to the end and returns its stdout; it must succeed. Every
    /// process it started is gone afterwards.
    fn run(&self, args: &[&str]) -> String {
        let mut child = Command::new(&self.binary)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--hide-scrollbars",
                "--no-first-run",
                "--no-default-browser-check",
            ])
            .arg(format!(
                "--user-data-dir={}",
                self.home.join("profile").display()
            ))
            .args(args)
            .env("HOME", &self.home)
            .env("XDG_CONFIG_HOME", self.home.join("config"))
            .env("XDG_CACHE_HOME", self.home.join("cache"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Its own process group: the browser and its helpers, killed together if need be.
            .process_group(0)
            .spawn()
            .expect("start chromium");
        let group = child.id() as i32;
        let stdout = reader(child.stdout.take().expect("stdout"));
        let stderr = reader(child.stderr.take().expect("stderr"));
        let status = wait_or_kill(&mut child, group);
        let stdout = stdout.join().expect("chromium's stdout");
        let stderr = stderr.join().expect("chromium's stderr");
        let left = reap_leftovers(group);
        assert!(
            left.is_empty(),
            "chromium processes still running after the test killed them: {left:?}"
        );
        assert!(
            status.is_some_and(|s| s.success()),
            "chromium {args:?} failed ({status:?}):\n{stderr}"
        );
        stdout
    }
}

fn reader(mut r: impl std::io::Read + Send + 'static) -> thread::JoinHandle<String> {
    thread::spawn(move || {
        let mut text = String::new();
        let _ = r.read_to_string(&mut text);
        text
    })
}

/// The exit status of the browser, or `None` when it ran past the timeout and its process
/// group was killed.
fn wait_or_kill(child: &mut Child, group: i32) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + CHROMIUM_TIMEOUT;
    while Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        thread::sleep(Duration::from_millis(50));
    }
    // Only the group this test started.
    let _ = kill(Pid::from_raw(-group), Signal::SIGKILL);
    let _ = child.wait();
    None
}

/// Processes of the browser's group, or handed to this process as their subreaper: waited for
/// a few seconds (helpers end once the browser has), then killed by pid and reaped. Returns
/// those still alive after that (none, unless something is badly wrong).
fn reap_leftovers(group: i32) -> Vec<(i32, String)> {
    let me = std::process::id() as i32;
    let ours = || -> Vec<(i32, String)> {
        processes()
            .into_iter()
            .filter(|p| p.pgid == group || p.ppid == me)
            .filter(|p| p.state != 'Z')
            .map(|p| (p.pid, p.comm))
            .collect()
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    while !ours().is_empty() && Instant::now() < deadline {
        reap_zombies();
        thread::sleep(Duration::from_millis(100));
    }
    let left = ours();
    for (pid, comm) in &left {
        eprintln!("report_html: killing left-over {comm} ({pid})");
        let _ = kill(Pid::from_raw(*pid), Signal::SIGKILL);
    }
    // SIGKILL takes effect asynchronously: wait for them to be gone, not for a fixed time.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        reap_zombies();
        let still = ours();
        if still.is_empty() || Instant::now() >= deadline {
            return still;
        }
        thread::sleep(Duration::from_millis(50));
    }
}

/// Waits for the children (adopted ones included) that have exited.
fn reap_zombies() {
    while let Ok(status) = waitpid(None, Some(WaitPidFlag::WNOHANG)) {
        if status == nix::sys::wait::WaitStatus::StillAlive {
            break;
        }
    }
}

struct Process {
    pid: i32,
    ppid: i32,
    pgid: i32,
    state: char,
    comm: String,
}

/// Every process, from /proc/PID/stat.
fn processes() -> Vec<Process> {
    let Ok(dir) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(|pid| {
            let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            // `pid (comm) state ppid pgrp ...`; comm may hold spaces and parentheses.
            let (head, rest) = stat.rsplit_once(')')?;
            let comm = head.split_once('(')?.1.to_owned();
            let mut fields = rest.split_whitespace();
            let state = fields.next()?.chars().next()?;
            let ppid = fields.next()?.parse().ok()?;
            let pgid = fields.next()?.parse().ok()?;
            Some(Process {
                pid,
                ppid,
                pgid,
                state,
                comm,
            })
        })
        .collect()
}

/// A decoded screenshot, 8-bit RGB.
struct Image {
    width: usize,
    height: usize,
    rgb: Vec<[u8; 3]>,
}

/// A rectangle of the screenshot: rows `top..bottom`, columns `left..right`.
#[derive(Debug)]
struct Area {
    top: usize,
    bottom: usize,
    left: usize,
    right: usize,
}

const WHITE: [u8; 3] = [255, 255, 255];

impl Image {
    fn decode(path: &Path) -> Self {
        let file = fs::File::open(path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
        let mut decoder = png::Decoder::new(file);
        decoder.set_transformations(png::Transformations::normalize_to_color8());
        let mut reader = decoder.read_info().expect("a PNG");
        let mut buf = vec![0; reader.output_buffer_size()];
        let frame = reader.next_frame(&mut buf).expect("a PNG frame");
        let channels = match frame.color_type {
            png::ColorType::Rgb => 3,
            png::ColorType::Rgba => 4,
            other => panic!("screenshot in {other:?}, not RGB"),
        };
        let rgb = buf[..frame.buffer_size()]
            .chunks_exact(channels)
            .map(|p| [p[0], p[1], p[2]])
            .collect();
        Self {
            width: frame.width as usize,
            height: frame.height as usize,
            rgb,
        }
    }

    fn at(&self, x: usize, y: usize) -> [u8; 3] {
        self.rgb[y * self.width + x]
    }

    /// The charts: the page is off-white and only a chart's background is pure white, so each
    /// run of rows holding a good stretch of white is one chart.
    fn chart_areas(&self) -> Vec<Area> {
        let white_in_row = |y: usize| (0..self.width).filter(|&x| self.at(x, y) == WHITE).count();
        let mut areas: Vec<Area> = Vec::new();
        let mut start = None;
        for y in 0..=self.height {
            let chart_row = y < self.height && white_in_row(y) >= 100;
            match (chart_row, start) {
                (true, None) => start = Some(y),
                (false, Some(top)) => {
                    start = None;
                    // Tall enough to be a chart, not a stray white line.
                    if y - top >= 100 {
                        let white_x = (top..y).flat_map(|yy| {
                            (0..self.width).filter(move |&x| self.at(x, yy) == WHITE)
                        });
                        let (left, right) =
                            white_x.fold((usize::MAX, 0), |(l, r), x| (l.min(x), r.max(x + 1)));
                        areas.push(Area {
                            top,
                            bottom: y,
                            left,
                            right,
                        });
                    }
                }
                _ => {}
            }
        }
        areas
    }

    fn pixels<'a>(&'a self, area: &'a Area) -> impl Iterator<Item = [u8; 3]> + 'a {
        (area.top..area.bottom)
            .flat_map(move |y| (area.left..area.right).map(move |x| self.at(x, y)))
    }

    /// How many pixels of `area` are not white, and how many distinct colours it has.
    fn ink(&self, area: &Area) -> (usize, usize) {
        let mut colours = BTreeSet::new();
        let mut drawn = 0;
        for p in self.pixels(area) {
            if p != WHITE {
                drawn += 1;
            }
            colours.insert(p);
        }
        (drawn, colours.len())
    }

    /// Pixels of `area` within a few levels of `rgb` in every channel (anti-aliasing aside,
    /// Chromium paints an SVG stroke in its exact colour).
    fn count_near(&self, area: &Area, rgb: [u8; 3]) -> usize {
        self.pixels(area)
            .filter(|p| p.iter().zip(rgb).all(|(&a, b)| a.abs_diff(b) <= 10))
            .count()
    }
}

#[test]
fn chart_areas_are_found_in_a_drawn_image() {
    // Off-white page, two white rectangles, the second with a red stroke in it.
    let (width, height) = (300, 400);
    let mut rgb = vec![[245, 246, 248]; width * height];
    for (top, bottom) in [(20, 150), (200, 380)] {
        for y in top..bottom {
            for x in 10..290 {
                rgb[y * width + x] = WHITE;
            }
        }
    }
    for x in 20..200 {
        rgb[300 * width + x] = [214, 39, 40];
    }
    let image = Image { width, height, rgb };
    let areas = image.chart_areas();
    assert_eq!(areas.len(), 2, "{areas:?}");
    assert_eq!(
        (areas[1].top, areas[1].bottom, areas[1].left, areas[1].right),
        (200, 380, 10, 290)
    );
    assert_eq!(image.count_near(&areas[1], [214, 39, 40]), 180);
    assert_eq!(image.count_near(&areas[0], [214, 39, 40]), 0);
    let counts: BTreeMap<usize, usize> = areas.iter().map(|a| (a.top, image.ink(a).0)).collect();
    assert_eq!(counts, BTreeMap::from([(20, 0), (200, 180)]));
}
