//! Boot the guest under qemu (TCG: no KVM here) and relay its serial console
//! to our stdout as it comes, keeping a copy to judge the run afterwards.
use std::{
    io::{Read, Write},
    path::Path,
    process::{Command, ExitStatus, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};

pub struct Boot {
    /// Everything the guest printed on its console.
    pub console: String,
    pub timed_out: bool,
    pub elapsed: Duration,
    /// qemu's own exit status (None when we killed it).
    pub status: Option<ExitStatus>,
}

/// qboot (shipped in qemu-system-data) boots as fast as SeaBIOS and prints
/// nothing; SeaBIOS on the serial port clears and resets the terminal, so when
/// qboot is missing it is at least told to stay off the serial port.
fn firmware() -> [&'static str; 2] {
    if Path::new("/usr/share/qemu/qboot.rom").is_file() {
        ["-bios", "qboot.rom"]
    } else {
        ["-fw_cfg", "name=etc/sercon-port,string=0"]
    }
}

/// The kernel command line of the busybox guest.
pub const APPEND: &str = "console=ttyS0 panic=-1 quiet";

pub fn boot(kernel: &Path, initrd: &Path, timeout: Duration, append: &str) -> Result<Boot> {
    let mut cmd = Command::new("qemu-system-x86_64");
    cmd.args(["-accel", "tcg", "-cpu", "max", "-m", "4096", "-smp", "2"])
        // The console is the serial port on our stdio; -no-reboot turns the
        // guest's poweroff, reboot or panic (panic=-1) into qemu exiting.
        .args(["-nographic", "-no-reboot"])
        // No network device at all: guest traffic cannot leave the guest.
        .args(["-nic", "none"])
        .args(firmware())
        .arg("-kernel")
        .arg(kernel)
        .arg("-initrd")
        .arg(initrd)
        .args(["-append", append])
        // Our stdin stays ours: qemu would otherwise put a terminal in raw mode.
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    let shown: Vec<_> = cmd.get_args().map(|a| a.to_string_lossy()).collect();
    eprintln!("+ qemu-system-x86_64 {}", shown.join(" "));

    let started = Instant::now();
    let mut child = cmd
        .spawn()
        .context("starting qemu-system-x86_64 (apt-get install qemu-system-x86)")?;
    let mut out = child.stdout.take().context("qemu's stdout")?;
    // Relay on a thread so the main one can watch the clock.
    let relay = thread::spawn(move || {
        let mut seen = Vec::new();
        let mut buf = [0u8; 4096];
        let stdout = std::io::stdout();
        loop {
            match out.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    seen.extend_from_slice(&buf[..n]);
                    let mut lock = stdout.lock();
                    // A closed stdout (e.g. `| head`) must not stop the capture.
                    let _ = lock.write_all(&buf[..n]).and_then(|()| lock.flush());
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => break,
            }
        }
        seen
    });

    let deadline = started + timeout;
    let (status, timed_out) = loop {
        if let Some(status) = child.try_wait().context("waiting for qemu")? {
            break (Some(status), false);
        }
        if Instant::now() >= deadline {
            eprintln!(
                "\n!!! the VM ran past its {} s timeout: killing qemu",
                timeout.as_secs()
            );
            // kill() fails only when qemu has just exited, which is fine.
            let _ = child.kill();
            child.wait().context("waiting for the killed qemu")?;
            break (None, true);
        }
        thread::sleep(Duration::from_millis(100));
    };
    let console = relay
        .join()
        .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
        .unwrap_or_default();
    Ok(Boot {
        console,
        timed_out,
        elapsed: started.elapsed(),
        status,
    })
}
