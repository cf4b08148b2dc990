"""Amavis constants shared by every part: destinies, content categories, nanny states.

A leaf module: it imports nothing from ``amavisd`` so config files, ``decide``,
``stats`` and the nanny can all import it.  Values follow spec/pipeline.md
sections 12.1 and 17 and spec/monitoring.md section 1.5.
"""

from __future__ import annotations

PRODUCT = "amavis"
VERSION_ID = "2.13.0"
VERSION_DATE = "20230106"
#: Our own release, reported beside the compatible Perl version.
PY_VERSION = "0.1.0"
VERSION = f"{PRODUCT}-{VERSION_ID} ({VERSION_DATE})"

# Destinies (pipeline.md section 17); -1 is intentionally unused.
D_TEMPFAIL = -4
D_REJECT = -3
D_BOUNCE = -2
D_DISCARD = 0
D_PASS = 1

# Major content categories, increasing importance (pipeline.md section 12.1).
CC_CATCHALL = 0
CC_CLEAN = 1
CC_MTA = 2
CC_OVERSIZED = 3
CC_BADH = 4
CC_SPAMMY = 5
CC_SPAM = 6
CC_UNCHECKED = 7
CC_BANNED = 8
CC_VIRUS = 9

CCAT_DISPLAY_NAMES_MAJOR = {
    CC_CATCHALL: "CatchAll",
    CC_CLEAN: "Clean",
    CC_MTA: "MtaFailed",
    CC_OVERSIZED: "Oversized",
    CC_BADH: "BadHdr",
    CC_SPAMMY: "Spammy",
    CC_SPAM: "Spam",
    CC_UNCHECKED: "Unchecked",
    CC_BANNED: "Banned",
    CC_VIRUS: "Virus",
}

#: Names a config file may use, exactly as amavisd.conf does.
CONFIG_CONSTANTS = {
    name: value
    for name, value in dict(globals()).items()
    if name.startswith(("D_", "CC_"))
}

# Nanny state letters (monitoring.md section 1.5).  The empty string is idle.
ST_IDLE = ""
ST_ACCEPTED = "A"
ST_BEGIN = "b"
ST_MAIL = "m"
ST_DATA = "d"
ST_CHECKING = "="
ST_MAIL_ID = "G"
ST_DECODING = "D"
ST_VIRUS = "V"
ST_SPAM = "S"
ST_PENPALS = "P"
ST_RESULTS = "r"
ST_QUARANTINE = "Q"
ST_FORWARDING = "F"
ST_CHECK_DONE = "."

NANNY_STATES = "AbmdGDVSPrQF."
NANNY_LEGEND = (
    ("A", "accepted a connection"),
    ("b", "begin with a protocol for accepting a request"),
    ("m", "'MAIL FROM' smtp command started a new transaction in the same session"),
    ("d", "transferring data from MTA to amavisd"),
    ("=", "content checking just started"),
    ("G", "generating and verifying unique mail_id"),
    ("D", "decoding of mail parts"),
    ("V", "virus scanning"),
    ("S", "spam scanning"),
    ("P", "pen pals database lookup and updates"),
    ("r", "preparing results"),
    ("Q", "quarantining and preparing/sending notifications"),
    ("F", "forwarding mail to MTA"),
    (".", "content checking just finished"),
    ("sp", "space indicates idle (elapsed bar is showing dots)"),
)

# Exit codes of the master and children (documented in docs/admin.md).
EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 64
EXIT_CONFIG = 78          # EX_CONFIG: the config is wrong; the daemon refuses to start
EXIT_BOOT_FAILED = 3      # a child could not boot; the master halts instead of looping
