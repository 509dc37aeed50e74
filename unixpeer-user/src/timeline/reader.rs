//! Reading a timeline, also one that is still being written or whose
//! writer was killed: a partial last line (or an unfinished last zstd
//! frame) is what such files end with, so it is a warning, not an error.
//! Anything wrong before that is an error naming the line or byte offset.

use std::{
    cell::Cell,
    collections::VecDeque,
    fs::File,
    io::{self, BufRead, BufReader, Read},
    path::{Path, PathBuf},
    rc::Rc,
};

use super::{
    FORMAT_NAME, FORMAT_VERSION, Position, TimelineError,
    format::{self, Header, Record},
};

const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];
/// No record comes near this; a longer line is damage, not data.
const MAX_LINE: u64 = 16 << 20;

pub struct Reader {
    lines: Lines,
    pub header: Header,
    warnings: Vec<String>,
    finished: bool,
    pub(crate) saw_end: bool,
    /// The parts of a rotated recording still to read after this one, as
    /// one timeline (`open_set`).
    rest: VecDeque<PathBuf>,
    /// The header of the part being read (`header` is the first part's).
    current: Header,
}

/// The file's lines, one at a time, each counted: what the header is read
/// from before there is a `Reader`.
struct Lines {
    path: PathBuf,
    src: Box<dyn BufRead>,
    line: u64,
    buf: Vec<u8>,
    /// Set by the zstd layer when the file ends inside a frame.
    cut_frame: Rc<Cell<Option<(u64, usize)>>>,
}

impl Reader {
    pub fn open(path: &Path) -> Result<Self, TimelineError> {
        Self::from_reader(path, open_file(path)?)
    }

    /// Reads the parts of a rotated recording (`--rotate`) as one
    /// timeline: the first part's seeds start the model, which then goes
    /// on through every part's events (later parts' seeds, the same model
    /// written again, are skipped). The files must be consecutive parts of
    /// one capture, in order; otherwise an error says which file is wrong,
    /// before anything is read. One file is read as `open` reads it.
    pub fn open_set(paths: &[PathBuf]) -> Result<Self, TimelineError> {
        let Some((first, rest)) = paths.split_first() else {
            return Err(TimelineError::Open {
                path: PathBuf::new(),
                source: io::Error::new(io::ErrorKind::NotFound, "no file to read"),
            });
        };
        if !rest.is_empty() {
            let headers = paths.iter().map(|p| peek_header(p)).collect::<Result<Vec<_>, _>>()?;
            for (i, pair) in headers.windows(2).enumerate() {
                check_next(&paths[i], &pair[0], &paths[i + 1], &pair[1])?;
            }
        }
        let mut r = Self::open(first)?;
        r.rest = rest.iter().cloned().collect();
        Ok(r)
    }

    /// Reads from any source; `path` only names it in messages.
    pub fn from_reader(path: &Path, input: impl Read + 'static) -> Result<Self, TimelineError> {
        let mut lines = Lines::new(path, input)?;
        let header = lines.read_header()?;
        let current = header.clone();
        Ok(Self {
            lines,
            header,
            warnings: Vec::new(),
            finished: false,
            saw_end: false,
            rest: VecDeque::new(),
            current,
        })
    }

    /// Goes on with the next part, past its header and seeds. Says whether
    /// there was one.
    fn next_part(&mut self) -> Result<bool, TimelineError> {
        let Some(path) = self.rest.pop_front() else { return Ok(false) };
        let mut lines = Lines::new(&path, open_file(&path)?)?;
        let header = lines.read_header()?;
        check_next(&self.lines.path, &self.current, &path, &header)?;
        self.current = header;
        self.lines = lines;
        self.saw_end = false;
        loop {
            match self.lines.read_line()? {
                true => match format::parse_record(&self.lines.buf)
                    .map_err(|why| TimelineError::bad(&path, Position::Line(self.lines.line), why))?
                {
                    Record::Seed(_) => {}
                    Record::SeedsDone => return Ok(true),
                    _ => {
                        return Err(TimelineError::bad(
                            &path,
                            Position::Line(self.lines.line),
                            "a part's seeds lack their seeds_done record",
                        ));
                    }
                },
                false => {
                    self.warn_cut();
                    return Ok(true);
                }
            }
        }
    }

    fn warn_cut(&mut self) {
        if !self.lines.buf.is_empty() {
            self.warnings.push(format!(
                "{}: line {}: ignored a partial last record ({} bytes): the recording was cut off",
                self.lines.path.display(),
                self.lines.line,
                self.lines.buf.len()
            ));
        }
        if let Some((offset, len)) = self.lines.cut_frame.take() {
            self.warnings.push(format!(
                "{}: byte offset {offset}: ignored an unfinished last zstd frame ({len} bytes): the recording was cut off",
                self.lines.path.display()
            ));
        }
    }
}

/// A recording still being written is read as it stood when opened: a
/// busy recorder can append faster than a replay reads, and the replay
/// must end.
fn open_file(path: &Path) -> Result<io::Take<File>, TimelineError> {
    let file = File::open(path).map_err(|source| TimelineError::Open { path: path.to_owned(), source })?;
    let len = file.metadata().map_err(|source| TimelineError::Open { path: path.to_owned(), source })?.len();
    Ok(file.take(len))
}

/// The capture a file's header names, if it can be read and names one.
pub(crate) fn capture_id_of(path: &Path) -> Option<String> {
    peek_header(path).ok()?.capture_id
}

/// The header alone, without reading the rest of the file.
fn peek_header(path: &Path) -> Result<Header, TimelineError> {
    let mut input = open_file(path)?;
    let (head, got) = read_head(path, &mut input)?;
    if got == 4 && head == ZSTD_MAGIC {
        let dec = zstd::stream::read::Decoder::new(io::Cursor::new(head).chain(input))
            .map_err(|source| TimelineError::Read { path: path.to_owned(), at: Position::Offset(0), source })?;
        let mut lines = Lines::from_source(path, Box::new(BufReader::new(dec)), Rc::default());
        return lines.read_header();
    }
    Lines::new(path, io::Cursor::new(head[..got].to_vec()).chain(input))?.read_header()
}

/// Whether `next` (at `b`) is the part right after `prev` (at `a`) of the
/// same capture.
fn check_next(a_path: &Path, prev: &Header, b_path: &Path, next: &Header) -> Result<(), TimelineError> {
    let bad = |why: String| TimelineError::bad(b_path, Position::Line(1), why);
    let (a, b) = (a_path.display(), b_path.display());
    let (Some(pid), Some(nid)) = (&prev.capture_id, &next.capture_id) else {
        let old = if prev.capture_id.is_none() { &a } else { &b };
        return Err(bad(format!(
            "{old} has no capture id (written by an unixtrace without --rotate): it can only be read alone"
        )));
    };
    if pid != nid {
        return Err(bad(format!(
            "not the same capture as {a} (capture {nid}, not {pid}; was unixtrace restarted?): read one capture's \
             parts at a time"
        )));
    }
    if next.part == prev.part + 1 && next.start_mono_ns >= prev.start_mono_ns {
        return Ok(());
    }
    if next.part <= prev.part {
        return Err(bad(format!(
            "part {} of its capture, given after {a} (part {}): give the parts in recording order, as ls lists them",
            next.part, prev.part
        )));
    }
    if next.part > prev.part + 1 {
        return Err(bad(format!(
            "part {} of its capture, but {a} is part {}: the parts between are missing (deleted by --keep?)",
            next.part, prev.part
        )));
    }
    Err(bad(format!("starts before {a}, the part before it: the parts' headers disagree")))
}

impl Lines {
    fn new(path: &Path, mut input: impl Read + 'static) -> Result<Self, TimelineError> {
        let cut_frame = Rc::new(Cell::new(None));
        let (head, got) = read_head(path, &mut input)?;
        if got == 0 {
            return Err(TimelineError::Empty { path: path.to_owned() });
        }
        let head = head[..got].to_vec();
        let src: Box<dyn BufRead> = if ZSTD_MAGIC.starts_with(&head) || head.starts_with(&ZSTD_MAGIC) {
            let mut data = head;
            input.read_to_end(&mut data).map_err(|source| TimelineError::Read {
                path: path.to_owned(),
                at: Position::Offset(got as u64),
                source,
            })?;
            Box::new(BufReader::with_capacity(1 << 16, Frames::new(data, cut_frame.clone())))
        } else if head[0] == b'{' {
            Box::new(BufReader::with_capacity(1 << 16, io::Cursor::new(head).chain(input)))
        } else {
            return Err(TimelineError::bad(
                path,
                Position::Offset(0),
                "not a unixtrace timeline (neither JSON Lines nor zstd)",
            ));
        };
        Ok(Self::from_source(path, src, cut_frame))
    }

    fn from_source(path: &Path, src: Box<dyn BufRead>, cut_frame: Rc<Cell<Option<(u64, usize)>>>) -> Self {
        Self { path: path.to_owned(), src, line: 0, buf: Vec::new(), cut_frame }
    }
}

impl Reader {
    /// The next record, `None` at the end.
    pub fn next_record(&mut self) -> Result<Option<Record>, TimelineError> {
        loop {
            if self.finished {
                return Ok(None);
            }
            if self.lines.read_line()? {
                break;
            }
            self.warn_cut();
            if !self.next_part()? {
                self.finished = true;
            }
        }
        let rec = format::parse_record(&self.lines.buf)
            .map_err(|why| TimelineError::bad(&self.lines.path, Position::Line(self.lines.line), why))?;
        if matches!(rec, Record::End { .. }) {
            self.saw_end = true;
        }
        Ok(Some(rec))
    }

    /// What the user should hear about but that did not stop the reading.
    pub(crate) fn take_warnings(&mut self) -> Vec<String> {
        std::mem::take(&mut self.warnings)
    }

    pub(crate) fn path(&self) -> &Path {
        &self.lines.path
    }

    /// Whether the end of what the file (or the last part) holds was reached.
    pub(crate) fn at_end(&self) -> bool {
        self.finished
    }
}

impl Lines {
    fn read_header(&mut self) -> Result<Header, TimelineError> {
        let bad = |path: &Path, why: String| TimelineError::bad(path, Position::Line(1), why);
        let complete = self.read_line()?;
        if self.buf.is_empty() {
            let why = match self.cut_frame.get() {
                Some(_) => "the header is cut off: the recording stopped before its first complete zstd frame",
                None => "the file holds no header",
            };
            return Err(bad(&self.path, why.into()));
        }
        if !complete {
            return Err(bad(
                &self.path,
                format!(
                    "the header is cut off after {} bytes: the recording stopped before its first flush",
                    self.buf.len()
                ),
            ));
        }
        #[derive(serde::Deserialize)]
        struct Probe {
            format: Option<String>,
            version: Option<serde_json::Value>,
        }
        let not_timeline = || format!("not a unixtrace timeline (the first line lacks \"format\":\"{FORMAT_NAME}\")");
        let probe: Probe = serde_json::from_slice(&self.buf).map_err(|_| bad(&self.path, not_timeline()))?;
        if probe.format.as_deref() != Some(FORMAT_NAME) {
            return Err(bad(&self.path, not_timeline()));
        }
        match probe.version.as_ref().and_then(serde_json::Value::as_u64) {
            Some(v) if v == u64::from(FORMAT_VERSION) => {}
            Some(v) => {
                return Err(bad(
                    &self.path,
                    format!("timeline format version {v}; this unixtrace reads version {FORMAT_VERSION} only"),
                ));
            }
            None => return Err(bad(&self.path, "the header has no numeric format version".into())),
        }
        serde_json::from_slice(&self.buf).map_err(|e| bad(&self.path, format!("bad header: {e}")))
    }

    /// Reads the next line into `buf` (without its newline); says whether
    /// it was complete. An empty `buf` means the end.
    fn read_line(&mut self) -> Result<bool, TimelineError> {
        self.buf.clear();
        self.line += 1;
        let res = (&mut self.src).take(MAX_LINE + 1).read_until(b'\n', &mut self.buf);
        if let Err(source) = res {
            return Err(match source.get_ref().and_then(|e| e.downcast_ref::<FrameError>()) {
                Some(f) => TimelineError::bad(&self.path, Position::Offset(f.offset), f.why.clone()),
                None => TimelineError::Read { path: self.path.clone(), at: Position::Line(self.line), source },
            });
        }
        if self.buf.len() as u64 > MAX_LINE {
            return Err(TimelineError::bad(
                &self.path,
                Position::Line(self.line),
                format!("a line longer than {MAX_LINE} bytes: not a timeline record"),
            ));
        }
        if self.buf.last() == Some(&b'\n') {
            self.buf.pop();
            return Ok(true);
        }
        Ok(false)
    }
}

/// The first bytes, which tell zstd from JSON Lines, and how many there are.
fn read_head(path: &Path, input: &mut impl Read) -> Result<([u8; 4], usize), TimelineError> {
    let mut head = [0u8; 4];
    let got = read_up_to(input, &mut head).map_err(|source| TimelineError::Read {
        path: path.to_owned(),
        at: Position::Offset(0),
        source,
    })?;
    Ok((head, got))
}

fn read_up_to(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

/// A damaged zstd frame, at its byte offset in the file.
#[derive(Debug, thiserror::Error)]
#[error("{why}")]
struct FrameError {
    offset: u64,
    why: String,
}

/// Decompresses a sequence of zstd frames one at a time, so memory stays
/// at one frame's window whatever the file's size.
struct Frames {
    data: Rc<[u8]>,
    /// Start of the next frame.
    next: usize,
    current: Option<(u64, zstd::stream::read::Decoder<'static, BufReader<Slice>>)>,
    cut: Rc<Cell<Option<(u64, usize)>>>,
}

impl Frames {
    fn new(data: Vec<u8>, cut: Rc<Cell<Option<(u64, usize)>>>) -> Self {
        Self { data: data.into(), next: 0, current: None, cut }
    }

    fn open_next(&mut self) -> io::Result<bool> {
        let rest = &self.data[self.next..];
        if rest.is_empty() {
            return Ok(false);
        }
        let offset = self.next as u64;
        match zstd::zstd_safe::find_frame_compressed_size(rest) {
            Ok(len) => {
                let slice = Slice { data: self.data.clone(), pos: self.next, end: self.next + len };
                let dec = zstd::stream::read::Decoder::new(slice).map_err(|e| frame_error(offset, &e))?.single_frame();
                self.current = Some((offset, dec));
                self.next += len;
                Ok(true)
            }
            // A frame that starts right but does not end: the writer died
            // while writing it.
            Err(_) if rest.starts_with(&ZSTD_MAGIC) || ZSTD_MAGIC.starts_with(rest) => {
                self.cut.set(Some((offset, rest.len())));
                self.next = self.data.len();
                Ok(false)
            }
            Err(code) => Err(io::Error::other(FrameError {
                offset,
                why: format!("not a zstd frame ({})", zstd::zstd_safe::get_error_name(code)),
            })),
        }
    }
}

fn frame_error(offset: u64, e: &io::Error) -> io::Error {
    io::Error::other(FrameError { offset, why: format!("corrupt zstd frame: {e}") })
}

impl Read for Frames {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            if let Some((offset, dec)) = &mut self.current {
                let n = dec.read(buf).map_err(|e| frame_error(*offset, &e))?;
                if n > 0 || buf.is_empty() {
                    return Ok(n);
                }
                self.current = None;
            }
            if !self.open_next()? {
                return Ok(0);
            }
        }
    }
}

/// One frame's bytes, shared with the rest of the file.
struct Slice {
    data: Rc<[u8]>,
    pos: usize,
    end: usize,
}

impl Read for Slice {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = buf.len().min(self.end - self.pos);
        buf[..n].copy_from_slice(&self.data[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::timeline::format::parse_record;
    use crate::timeline::replay::tests::recording;

    fn read_all(bytes: Vec<u8>) -> Result<(Vec<Record>, Vec<String>), TimelineError> {
        let mut r = Reader::from_reader(Path::new("rec.jsonl"), io::Cursor::new(bytes))?;
        let mut out = Vec::new();
        while let Some(rec) = r.next_record()? {
            out.push(rec);
        }
        Ok((out, r.take_warnings()))
    }

    fn err(bytes: Vec<u8>) -> String {
        match read_all(bytes) {
            Ok(_) => panic!("expected an error"),
            Err(e) => e.to_string(),
        }
    }

    fn zstd_frames(text: &[u8], per_frame: usize) -> Vec<u8> {
        text.chunks(per_frame).flat_map(|c| zstd::encode_all(c, 1).unwrap()).collect()
    }

    #[test]
    fn a_whole_recording_reads_back() {
        let (recs, warnings) = read_all(recording()).unwrap();
        assert_eq!(recs.len(), 7);
        assert!(warnings.is_empty());
    }

    #[test]
    fn every_backend_reads_back_by_the_name_it_is_written_with() {
        let tracepoint = String::from_utf8(recording()).unwrap();
        assert!(tracepoint.contains("\"backend\":\"tracepoint\""));
        for b in crate::capture::Strategy::ALL {
            let text = tracepoint.replacen("\"tracepoint\"", &format!("\"{b}\""), 1);
            let r = Reader::from_reader(Path::new("rec.jsonl"), io::Cursor::new(text.into_bytes())).unwrap();
            assert_eq!(r.header.backend, b);
        }
    }

    #[test]
    fn a_partial_last_record_is_a_warning() {
        let mut bytes = recording();
        bytes.truncate(bytes.len() - 10);
        let (recs, warnings) = read_all(bytes).unwrap();
        assert_eq!(recs.len(), 6, "everything before the cut");
        assert_eq!(warnings.len(), 1);
        assert!(warnings[0].starts_with("rec.jsonl: line 8: ignored a partial last record"), "{warnings:?}");
    }

    #[test]
    fn bad_files_name_the_file_and_the_place() {
        assert_eq!(err(Vec::new()), "rec.jsonl: the file is empty, not a unixtrace timeline");
        let whole = recording();
        assert!(err(whole[..40].to_vec()).starts_with("rec.jsonl: line 1: the header is cut off after 40 bytes"));
        assert!(err(b"\x7fELF\x02\x01".to_vec()).starts_with("rec.jsonl: byte offset 0: not a unixtrace timeline"));
        assert!(err(b"{\"a\":1}\n".to_vec()).starts_with("rec.jsonl: line 1: not a unixtrace timeline"));
        let v2 = String::from_utf8(whole.clone()).unwrap().replacen("\"version\":1", "\"version\":2", 1);
        assert_eq!(
            err(v2.into_bytes()),
            "rec.jsonl: line 1: timeline format version 2; this unixtrace reads version 1 only"
        );
        let magic = String::from_utf8(whole.clone()).unwrap().replacen("\"tracepoint\"", "\"magic\"", 1);
        let e = err(magic.into_bytes());
        assert!(
            e.starts_with(
                "rec.jsonl: line 1: bad header: unknown backend \"magic\" (this unixtrace knows fentry, kprobe, \
                 tracepoint): replay the file with the unixtrace named in its \"writer\""
            ),
            "{e}"
        );
        // A byte flipped in the middle of line 4 (an event).
        let mut bad = whole.clone();
        let line4 = bad.split(|&b| b == b'\n').take(3).map(|l| l.len() + 1).sum::<usize>();
        bad[line4 + 3] = b'#';
        let e = err(bad);
        assert!(e.starts_with("rec.jsonl: line 4: bad record"), "{e}");
    }

    #[test]
    fn zstd_frames_read_back_and_a_cut_last_frame_is_a_warning() {
        let text = recording();
        let z = zstd_frames(&text, 300);
        let (recs, warnings) = read_all(z.clone()).unwrap();
        assert_eq!(recs.len(), 7);
        assert!(warnings.is_empty(), "{warnings:?}");
        let mut cut = z.clone();
        cut.truncate(z.len() - 5);
        let (recs, warnings) = read_all(cut).unwrap();
        assert!(recs.len() < 7 && !recs.is_empty());
        assert!(warnings.iter().any(|w| w.contains("unfinished last zstd frame")), "{warnings:?}");
        // Damage inside the first frame: an error at its offset.
        let mut bad = z.clone();
        bad[20] ^= 0xff;
        let e = err(bad);
        assert!(e.starts_with("rec.jsonl: byte offset 0:") || e.starts_with("rec.jsonl: line 1:"), "{e}");
        assert!(parse_record(b"{}").is_err());
    }
}
