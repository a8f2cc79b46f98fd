"""Lock tester for tests/locks.rs: one process taking file locks the way programs do,
and saying on stdout what happened, a line per event (flushed at once).

  locktool.py hold    PATH START LEN r|w [ofd]   lock (F_SETLK), print "locked PID",
                                                   hold until stdin closes
  locktool.py try     PATH START LEN r|w [ofd]   F_SETLK once: "ok" or "busy"
  locktool.py getlk   PATH START LEN r|w         F_GETLK: "unlocked" or "TYPE START LEN PID"
  locktool.py wait    PATH START LEN r|w         F_SETLKW through libc, with a SIGUSR1
                                                   handler: "waiting", then "locked", or
                                                   "errno EINTR" when the signal interrupts
  locktool.py counter PATH ROUNDS                 ROUNDS times: F_SETLKW on the whole file,
                                                   read a number, write it plus one, unlock
  locktool.py flock   PATH ex|sh [nb]            flock(): "locked" (hold until stdin closes)
                                                   or "busy"
  locktool.py write   PATH                        hold: take a write lock, print "locked",
                                                   then on each stdin line write it and fsync,
                                                   printing "wrote" or "errno NAME"
  locktool.py sqlite  DB WRITER ROWS              insert ROWS rows in their own transactions,
                                                   retrying on SQLITE_BUSY; print "row ID" for
                                                   each committed one
  locktool.py create  DB                          make the table the writers insert into
  locktool.py check   DB                          "integrity RESULT", then "id ID" per row
"""

import ctypes
import errno
import fcntl
import os
import signal
import sqlite3
import struct
import sys
import time

FLOCK = "hhqqi4x"  # struct flock on x86_64 Linux: type, whence, start, len, pid


def say(*words):
    print(*words, flush=True)


def kind(s):
    return fcntl.F_RDLCK if s == "r" else fcntl.F_WRLCK


def setlk(fd, cmd, typ, start, length):
    fcntl.fcntl(fd, cmd, struct.pack(FLOCK, typ, 0, start, length, 0))


def hold_until_stdin_closes():
    sys.stdin.read()


def main():
    op, path = sys.argv[1], sys.argv[2]
    if op in ("hold", "try"):
        start, length, typ = int(sys.argv[3]), int(sys.argv[4]), kind(sys.argv[5])
        ofd = len(sys.argv) > 6 and sys.argv[6] == "ofd"
        cmd = fcntl.F_OFD_SETLK if ofd else fcntl.F_SETLK
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            setlk(fd, cmd, typ, start, length)
        except OSError as e:
            if e.errno in (errno.EAGAIN, errno.EACCES):
                say("busy")
                return
            raise
        if op == "try":
            say("ok")
            return
        say("locked", os.getpid())
        hold_until_stdin_closes()
    elif op == "getlk":
        start, length, typ = int(sys.argv[3]), int(sys.argv[4]), kind(sys.argv[5])
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        got = fcntl.fcntl(fd, fcntl.F_GETLK, struct.pack(FLOCK, typ, 0, start, length, 0))
        t, _, s, n, pid = struct.unpack(FLOCK, got)
        if t == fcntl.F_UNLCK:
            say("unlocked")
        else:
            say("r" if t == fcntl.F_RDLCK else "w", s, n, pid)
    elif op == "wait":
        start, length, typ = int(sys.argv[3]), int(sys.argv[4]), kind(sys.argv[5])
        signal.signal(signal.SIGUSR1, lambda *_: None)
        signal.siginterrupt(signal.SIGUSR1, True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        libc = ctypes.CDLL(None, use_errno=True)
        buf = ctypes.create_string_buffer(struct.pack(FLOCK, typ, 0, start, length, 0))
        say("waiting")
        if libc.fcntl(fd, fcntl.F_SETLKW, buf) == -1:
            say("errno", errno.errorcode[ctypes.get_errno()])
            return
        say("locked", os.getpid())
        hold_until_stdin_closes()
    elif op == "counter":
        rounds = int(sys.argv[3])
        fd = os.open(path, os.O_RDWR)
        for _ in range(rounds):
            setlk(fd, fcntl.F_SETLKW, fcntl.F_WRLCK, 0, 0)
            n = int(os.pread(fd, 64, 0).decode() or "0")
            data = b"%d\n" % (n + 1)
            os.ftruncate(fd, 0)
            os.pwrite(fd, data, 0)
            setlk(fd, fcntl.F_SETLK, fcntl.F_UNLCK, 0, 0)
        os.close(fd)
        say("done")
    elif op == "flock":
        how = fcntl.LOCK_EX if sys.argv[3] == "ex" else fcntl.LOCK_SH
        if len(sys.argv) > 4 and sys.argv[4] == "nb":
            how |= fcntl.LOCK_NB
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, how)
        except OSError as e:
            if e.errno in (errno.EAGAIN, errno.EWOULDBLOCK):
                say("busy")
                return
            raise
        say("locked")
        hold_until_stdin_closes()
    elif op == "write":
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        setlk(fd, fcntl.F_SETLK, fcntl.F_WRLCK, 0, 0)
        say("locked")
        for line in sys.stdin:
            try:
                os.pwrite(fd, line.encode(), 0)
                os.fsync(fd)
                say("wrote")
            except OSError as e:
                say("errno", errno.errorcode[e.errno])
    elif op == "sqlite":
        writer, rows = sys.argv[3], int(sys.argv[4])
        db = sqlite3.connect(path, timeout=60, isolation_level=None)
        for i in range(rows):
            row = "%s-%d" % (writer, i)
            deadline = time.monotonic() + 120
            while True:
                try:
                    db.execute("BEGIN IMMEDIATE")
                    db.execute("INSERT INTO t (id, writer, body) VALUES (?, ?, ?)",
                               (row, writer, os.urandom(300).hex()))
                    db.execute("COMMIT")
                    say("row", row)
                    break
                except sqlite3.IntegrityError:
                    # A commit that reported a failure but went through: the row is in.
                    say("row", row)
                    break
                except sqlite3.OperationalError as e:
                    try:
                        db.execute("ROLLBACK")
                    except sqlite3.OperationalError:
                        pass
                    if time.monotonic() > deadline:
                        raise
                    say("retry", row, e)
                    time.sleep(0.05)
        db.close()
        say("done")
    elif op == "create":
        db = sqlite3.connect(path, isolation_level=None)
        db.execute("CREATE TABLE t (id TEXT PRIMARY KEY, writer TEXT, body TEXT)")
        db.close()
        say("created")
    elif op == "check":
        db = sqlite3.connect(path, timeout=60, isolation_level=None)
        say("integrity", db.execute("PRAGMA integrity_check").fetchone()[0])
        for (row,) in db.execute("SELECT id FROM t ORDER BY id"):
            say("id", row)
        db.close()
        say("done")
    else:
        raise SystemExit("unknown op " + op)


if __name__ == "__main__":
    main()
