//! How wide the table may be.

use std::io::IsTerminal;

/// On a terminal: its width (TIOCGWINSZ), else `COLUMNS`, else 80.
/// Into a pipe or file: `COLUMNS` if set, else unlimited, so each row stays
/// on one line for grep and friends.
pub fn width() -> Option<usize> {
    let columns = std::env::var("COLUMNS").ok().and_then(|c| c.trim().parse::<usize>().ok()).filter(|&c| c > 0);
    let stdout = std::io::stdout();
    if !stdout.is_terminal() {
        return columns;
    }
    Some(ioctl_width().or(columns).unwrap_or(80))
}

fn ioctl_width() -> Option<usize> {
    let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
    // SAFETY: TIOCGWINSZ writes a struct winsize into `ws`.
    let rc = unsafe { libc::ioctl(libc::STDOUT_FILENO, libc::TIOCGWINSZ, &mut ws) };
    (rc == 0 && ws.ws_col > 0).then_some(usize::from(ws.ws_col))
}
