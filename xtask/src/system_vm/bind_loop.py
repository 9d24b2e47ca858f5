#!/usr/bin/env python3
"""Tries the forbidden bind (0.0.0.0:PORT) every 2 ms until STOPFILE exists, then prints
`attempts=N bound=M other=K`: M must stay 0 while proxyguard's bind rule is in force."""
import errno
import os
import socket
import sys
import time

port, stopfile = int(sys.argv[1]), sys.argv[2]
attempts = bound = other = 0
while not os.path.exists(stopfile):
    s = socket.socket()
    try:
        s.bind(("0.0.0.0", port))
        bound += 1
    except PermissionError as e:
        if e.errno != errno.EPERM:
            other += 1
    except OSError:
        other += 1
    finally:
        s.close()
    attempts += 1
    time.sleep(0.002)
print(f"attempts={attempts} bound={bound} other={other}", flush=True)
