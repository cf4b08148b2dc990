"""The settings registry: every amavisd variable we know, with default, type and scope.

One list is the truth for names, defaults and scope.  The CLI, the Python config
loader, the Perl config importer, ``amavisd showconfig`` and docs/config.md all read
it (``python -m amavisd.config.docgen`` writes the doc).  Names are the Perl
variable names without their sigil (``$max_servers`` -> ``max_servers``), so one
grep finds both the spec and the code.

``GLOBAL`` settings are read once by the master; ``BANK`` settings may also appear
inside a policy bank and are looked up through the bank in force
(spec/pipeline.md section 16).
"""

from __future__ import annotations

import socket
from dataclasses import dataclass, field
from typing import Any

from amavisd.config import types as t
from amavisd.config.types import Converter
from amavisd.logtemplates import default_log_template

GLOBAL = "global"
BANK = "bank"


@dataclass(frozen=True)
class Setting:
    """One variable: its name, default, converter, scope, section and a one-line doc."""

    name: str
    default: Any
    parse: Converter
    scope: str
    section: str
    doc: str
    aliases: tuple[str, ...] = ()
    #: A callable(values) giving the default from other settings (Perl "after-defaults").
    derive: Any = None
    sigil: str = "$"


REGISTRY: dict[str, Setting] = {}
ALIASES: dict[str, str] = {}
_section = "misc"


def section(name: str) -> None:
    global _section
    _section = name


def setting(name: str, default: Any, parse: Converter, scope: str, doc: str,
            aliases: tuple[str, ...] = (), derive: Any = None, sigil: str = "$") -> Setting:
    entry = Setting(name, default, parse, scope, _section, doc, aliases, derive, sigil)
    if name in REGISTRY:
        raise RuntimeError(f"setting {name} registered twice")
    REGISTRY[name] = entry
    for alias in aliases:
        ALIASES[alias] = name
    return entry


def canonical(name: str) -> str | None:
    """The registry name for ``name`` (an alias or the name itself), or None."""
    if name in REGISTRY:
        return name
    return ALIASES.get(name)


def _hostname() -> str:
    return socket.getfqdn() or "localhost"


def _both_families() -> list[str]:
    """``$inet_socket_bind`` default: both loopbacks where both work (protocols.md 2.1)."""
    binds = ["127.0.0.1"]
    if socket.has_ipv6:
        try:
            probe = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
            probe.bind(("::1", 0))
            probe.close()
            binds.append("[::1]")
        except OSError:
            pass
    return binds


def _legacy_table(value: Any) -> list[Any]:
    """A ``*_maps`` default that refers to a legacy scalar: empty while it is undef."""
    return [] if value is None else [value]


# ---------------------------------------------------------------- process model
section("process")
setting("max_servers", 2, t.integer(1), GLOBAL,
        "Number of child processes (fixed pool), or the upper bound of the dynamic pool.")
setting("min_servers", None, t.integer(0), GLOBAL,
        "When set, a dynamic pool between min_servers and max_servers is kept.")
setting("min_spare_servers", 1, t.integer(0), GLOBAL,
        "Dynamic pool: start a child when fewer than this many are idle.")
setting("max_spare_servers", 2, t.integer(0), GLOBAL,
        "Dynamic pool: stop idle children above this many (capped to max_servers-1).")
setting("max_requests", 20, t.integer(0), GLOBAL,
        "A child retires after this many tasks or connections (0: never); a session is never cut.")
setting("child_timeout", 480, t.integer(1), BANK,
        "Seconds a child may work on one message after the last client input.")
setting("daemonize", 1, t.boolean, GLOBAL, "Fork into the background on 'start'.")
setting("daemon_user", None, t.string, GLOBAL, "User the daemon drops to (name or uid).")
setting("daemon_group", None, t.string, GLOBAL, "Group the daemon drops to (name or gid).")
setting("daemon_groups", None, t.string_list, GLOBAL,
        "Supplementary groups; the first one becomes the effective group.", sigil="@")
setting("daemon_chroot_dir", None, t.string, GLOBAL, "Chroot directory (empty: none).")
setting("MYHOME", "/var/amavis", t.string, GLOBAL, "Home directory of the daemon.")
setting("TEMPBASE", None, t.string, GLOBAL,
        "Where per-child temp directories are made (default $MYHOME).",
        derive=lambda v: v["MYHOME"])
setting("db_home", None, t.string, GLOBAL,
        "Directory of the stats segment (default $MYHOME/db).",
        derive=lambda v: f"{v['MYHOME']}/db")
setting("enable_db", 0, t.boolean, GLOBAL,
        "Keep the stats segment (counters for amavisd-agent, states for amavisd-nanny).")
setting("pid_file", None, t.string, GLOBAL,
        "PID file of the master (default $MYHOME/amavisd.pid when daemonizing).",
        derive=lambda v: f"{v['MYHOME']}/amavisd.pid")
setting("lock_file", None, t.string, GLOBAL, "Accepted for compatibility; we need no lock file.")
setting("instance_name", None, t.string, GLOBAL, "Instance name (-i), available to config files.")
setting("QUARANTINEDIR", None, t.string, GLOBAL, "Quarantine directory (local: and bsmtp: paths).")
setting("mail_digest_algorithm", "MD5", t.string, GLOBAL,
        "Digest of the message body (%b, quarantine file names, JSON digest_body): MD5, "
        "SHA-1, SHA-256, ...")
setting("mail_id_size_bits", 72, t.integer(24), GLOBAL,
        "Size of mail_id and secret_id in bits; a multiple of 24.")
setting("allow_preserving_evidence", 1, t.boolean, GLOBAL,
        "Keep the temp directory of a message whose processing failed.")
setting("path", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/sbin:/usr/bin:/bin", t.string,
        GLOBAL, "PATH for external programs.")

# ---------------------------------------------------------------- sockets
section("sockets")
setting("inet_socket_port", [], t.ports, GLOBAL,
        "TCP port(s) to listen on; appended to listen_sockets.")
setting("inet_socket_bind", None, t.string_list, GLOBAL,
        "Bind address(es) for port-only sockets (default both loopbacks).",
        derive=lambda v: _both_families())
setting("unix_socketname", None, t.string, GLOBAL,
        "Unix socket path to listen on; appended to listen_sockets.")
setting("unix_socket_mode", None, t.integer(0, 0o7777), GLOBAL,
        "Mode of the Unix sockets (e.g. 0o660), set on a cold start.")
setting("listen_sockets", [], t.string_list, GLOBAL,
        "Listening sockets: 'port', 'inet:host:port', 'inet6:[addr]:port', 'unix:/path', '/path'.",
        sigil="@")
setting("listen_queue_size", None, t.integer(1), GLOBAL, "Backlog of listen() (default SOMAXCONN).")
setting("interface_policy", {}, t.mapping, GLOBAL,
        "Policy bank per listening socket: keys 'PORT', 'IP:PORT', 'SOCK' or a socket path.",
        sigil="%")
setting("policy_bank", {}, t.mapping, GLOBAL,
        "Named policy banks: name -> dict of BANK settings.", sigil="%")
setting("inet_acl", ["127.0.0.1", "[::1]"], t.string_list, BANK,
        "Client IP access list for TCP sockets; first match wins, '!' negates.", sigil="@")
setting("protocol", None, t.choice(None, "SMTP", "LMTP", "AM.PDP", "TCP-LOOKUP"), BANK,
        "Protocol of a socket, usually set in a bank chosen by interface_policy.")
setting("mynetworks", ["127.0.0.0/8", "[::1]", "169.254.0.0/16", "[fe80::]/10",
                       "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "[fc00::]/7"],
        t.string_list, GLOBAL, "Our networks; the default table of mynetworks_maps.", sigil="@")
setting("mynetworks_maps", None, t.sequence, BANK,
        "IP tables of our networks (default: the mynetworks list).", sigil="@",
        derive=lambda v: [v["mynetworks"]])
setting("client_ipaddr_policy", None, t.sequence, BANK,
        "Pairs of (IP table, 'BANK1,BANK2'): the first table matching the client IP "
        "(XFORWARD ADDR, 0.0.0.0 if unknown) loads its banks (default: MYNETS).", sigil="@",
        derive=lambda v: [x for table in v["mynetworks_maps"] for x in (table, "MYNETS")])
setting("author_to_policy_bank_maps", [], t.sequence, BANK,
        "Author address (+/@signer) -> bank names, loaded after DKIM verification.", sigil="@")
setting("local_domains_acl", [], t.string_list, GLOBAL,
        "Our domains: 'dom' exact, '.dom' with subdomains, '!' negates (direction counters, log).",
        sigil="@")
setting("local_domains_maps", None, t.sequence, BANK,
        "Lookup tables deciding which recipients are local (default: local_domains_acl).",
        sigil="@", derive=lambda v: [v["local_domains_acl"]])
setting("recipient_delimiter", None, t.string, BANK,
        "Address extension delimiter(s), e.g. '+'; used by lookups and address extensions.")
setting("localpart_is_case_sensitive", 0, t.boolean, BANK,
        "Compare local parts case-sensitively in lookups.")
setting("originating", 0, t.boolean, BANK,
        "Mail comes from our own users (set by banks such as MYNETS or ORIGINATING).")

# ---------------------------------------------------------------- names
section("names")
setting("myhostname", None, t.string, GLOBAL, "Fully qualified name of this host.",
        derive=lambda v: _hostname())
setting("mydomain", None, t.string, GLOBAL, "Our mail domain.",
        derive=lambda v: v["myhostname"].split(".", 1)[-1] if "." in v["myhostname"]
        else v["myhostname"])
setting("localhost_name", "localhost", t.string, BANK,
        "Name used in EHLO to the back end and in 'by' of our Received field.")
setting("myprogram_name", None, t.string, GLOBAL,
        "Program name in titles and log lines (default: argv[0] as invoked).")

# ---------------------------------------------------------------- SMTP server
section("smtp_server")
setting("smtpd_timeout", 480, t.integer(5, raise_to_minimum=True), BANK,
        "Idle seconds while waiting for client input; values below 5 become 5.")
setting("smtpd_recipient_limit", 1100, t.integer(1), GLOBAL,
        "Maximum RCPT commands per transaction (452 4.5.3 above it).")
setting("smtpd_message_size_limit", None, t.integer(0), BANK,
        "Message size limit in bytes: advertised in EHLO and enforced during DATA.")
setting("enforce_smtpd_message_size_limit_64kb_min", 1, t.boolean, GLOBAL,
        "Raise any size limit below 65536 up to 65536.")
setting("message_size_limit_maps", [], t.sequence, BANK,
        "Per-recipient size limits (lookup tables).", sigil="@")
setting("smtpd_greeting_banner", "${helo-name} ${protocol} ${product} service ready",
        t.string, BANK, "Greeting after 220; ${helo-name}, ${protocol}, ${product}, ... expanded.")
setting("smtpd_quit_banner", "${helo-name} ${product} closing transmission channel",
        t.string, BANK, "Text of the 221 reply to QUIT.")
setting("smtpd_discard_ehlo_keywords", [], t.string_list, BANK,
        "EHLO keywords not to advertise (by first word, case-insensitive).", sigil="@")
setting("tls_security_level_in", None, t.string, BANK,
        "Inbound STARTTLS: undef/none off, 'may' offered, anything else required.")
setting("smtpd_tls_server_options", {}, t.mapping, BANK,
        "TLS server options: SSL_cert_file and SSL_key_file.", sigil="%")
setting("smtpd_tls_cert_file", None, t.string, GLOBAL,
        "Deprecated: feeds smtpd_tls_server_options{SSL_cert_file}.")
setting("smtpd_tls_key_file", None, t.string, GLOBAL,
        "Deprecated: feeds smtpd_tls_server_options{SSL_key_file}.")
setting("auth_mech_avail", [], t.string_list, BANK,
        "AUTH mechanisms offered (credentials are recorded, never verified).", sigil="@")
setting("auth_required_inp", None, t.boolean, BANK, "Require AUTH before MAIL.")
setting("haproxy_target_enabled", None, t.boolean, BANK,
        "Expect a HAProxy PROXY v1 line before the greeting.")

# ---------------------------------------------------------------- forwarding
section("forwarding")
setting("forward_method", "smtp:[127.0.0.1]:10025", t.delivery_method, BANK,
        "Where passed mail goes: smtp:[host]:port, lmtp:..., bsmtp:file, pipe:argv=..., or ''.")
setting("notify_method", None, t.delivery_method, BANK,
        "Where notifications and DSNs go (default forward_method).",
        derive=lambda v: v["forward_method"])
setting("resend_method", None, t.delivery_method, BANK,
        "Used instead of forward_method when the body was modified.")
setting("release_method", None, t.delivery_method, BANK, "Where released mail goes.")
setting("requeue_method", "smtp:[127.0.0.1]:25", t.delivery_method, BANK,
        "Where requeued mail goes.")
setting("forward_method_maps", [], t.sequence, BANK,
        "Per-recipient delivery method (lookup tables); default forward_method.", sigil="@")
setting("local_client_bind_address", None, t.string, BANK,
        "Local address for outgoing connections.")
setting("tls_security_level_out", None, t.string, BANK,
        "Outbound STARTTLS: undef/none never, 'may' if offered, anything else required.")
setting("smtp_tls_client_options", {}, t.mapping, BANK,
        "TLS client options (SSL_ca_file, SSL_verify_mode, ...).", sigil="%")
setting("propagate_dsn_if_possible", 1, t.boolean, BANK,
        "Pass NOTIFY/RET/ENVID/ORCPT on when the back end offers DSN.")
setting("terminate_dsn_on_notify_success", 0, t.boolean, BANK,
        "Strip SUCCESS from NOTIFY when forwarding.")
setting("smtp_connection_cache_on_demand", 1, t.boolean, GLOBAL,
        "Switch outgoing connection caching per message: on when the previous task ended "
        "under 5 s ago, off at 15 s or more.")
setting("smtp_connection_cache_enable", 1, t.boolean, GLOBAL,
        "Outgoing connection caching on; with $smtp_connection_cache_on_demand only the "
        "state a child starts in. Both 0: a new connection per message.")
setting("allowed_added_header_fields", {
    **{name: 1 for name in (
        "received", "dkim-signature", "authentication-results", "vbr-info", "x-quarantine-id",
        "x-amavis-alert", "x-amavis-hold", "x-amavis-modified", "x-amavis-penpals",
        "x-amavis-os-fingerprint", "x-amavis-policybank", "x-spam-status", "x-spam-level",
        "x-spam-flag", "x-spam-score", "x-spam-tests", "x-crm114-status", "x-crm114-cacheid",
        "x-dspam-result", "x-dspam-signature", "x-bogosity")},
    "x-spam-report": 0, "x-spam-checker-version": 0, "x-amavis-category": 0},
        t.mapping, BANK,
        "Header fields we may add (lower-case names, spec pipeline.md section 20).", sigil="%")
setting("soft_bounce", 0, t.boolean, BANK, "Turn 5xx replies into 4xx.")
setting("replace_existing_extension", 1, t.boolean, BANK,
        "An address extension replaces the recipient's own extension (0: it is appended).")
for _kind in ("virus", "spam", "banned", "bad_header"):
    setting(f"addr_extension_{_kind}", None, t.string, GLOBAL,
            f"Legacy: the default table of addr_extension_{_kind}_maps.")
    setting(f"addr_extension_{_kind}_maps", None, t.sequence, BANK,
            f"Address extension for local recipients of {_kind.replace('_', ' ')} mail "
            f"(lookup tables; default: addr_extension_{_kind}; needs recipient_delimiter).",
            sigil="@", derive=lambda v, k=_kind: _legacy_table(v[f"addr_extension_{k}"]))
setting("addr_extension_maps_by_ccat", {}, t.mapping, BANK,
        "Address extension tables by content category: overrides the addr_extension_*_maps.",
        sigil="%")

# ---------------------------------------------------------------- content checks
section("content")
setting("MAXLEVELS", 14, t.integer(0), GLOBAL,
        "Maximum decoding depth of nested archives and parts (0: no limit).")
setting("MAXFILES", 1500, t.integer(0), GLOBAL,
        "Maximum number of parts a message may be decoded into (0: no limit).")
setting("MIN_EXPANSION_QUOTA", None, t.integer(0), GLOBAL,
        "Decoding storage quota in bytes, lower bound (undef: not enforced).")
setting("MAX_EXPANSION_QUOTA", None, t.integer(0), GLOBAL,
        "Decoding storage quota in bytes, upper bound (undef: not enforced).")
setting("MIN_EXPANSION_FACTOR", 5, t.integer(0), GLOBAL,
        "Decoding storage quota: at least this many times the message size.")
setting("MAX_EXPANSION_FACTOR", 500, t.integer(0), GLOBAL,
        "Decoding storage quota: at most this many times the message size.")
setting("decoding_time_limit", 120, t.integer(1), GLOBAL,
        "Seconds the decoding of one message may take (ours; amavis bounds it by child_timeout).")
setting("keep_decoded_original_maps", [], t.sequence, BANK,
        "File types (long form) whose original is kept beside what was decoded from it.",
        sigil="@")
setting("banned_filename_maps", ["DEFAULT"], t.sequence, BANK,
        "Banned-name tables per recipient, or names of tables in banned_rules.", sigil="@")
setting("banned_filename_re", None, t.anything, GLOBAL,
        "The DEFAULT banned-name table (a new_RE list of regexes or (regex, value) pairs).")
setting("banned_namepath_re", None, t.anything, GLOBAL,
        "Banned table matched against the whole path of a part (attribute form).")
setting("banned_rules", {}, t.mapping, GLOBAL,
        "Named banned tables; 'DEFAULT' is banned_filename_re unless set.", sigil="%")
setting("allowed_header_tests", {}, t.mapping, GLOBAL,
        "Bad-header tests to run (other mime syntax empty long control 8bit utf8 missing "
        "multiple); unset keys take amavis's defaults (all on, utf8 off).", sigil="%")
for _check in ("virus", "banned", "spam", "header"):
    setting(f"bypass_{_check}_checks_maps", [], t.sequence, BANK,
            f"Recipients for whom {_check} checks are skipped (lookup tables).", sigil="@")
for _lover in ("virus", "banned_files", "unchecked", "spam", "bad_header"):
    setting(f"{_lover}_lovers_maps", [], t.sequence, BANK,
            f"Recipients who receive {_lover.replace('_', ' ')} mail anyway (lookup tables).",
            sigil="@")
setting("final_virus_destiny", 0, t.integer(-4, 1), BANK,
        "Destiny of infected mail: D_PASS, D_DISCARD, D_BOUNCE, D_REJECT or D_TEMPFAIL.")
setting("final_banned_destiny", 0, t.integer(-4, 1), BANK, "Destiny of mail with banned parts.")
setting("final_unchecked_destiny", 1, t.integer(-4, 1), BANK,
        "Destiny of mail that could not be checked (encrypted, over limits, ambiguous).")
setting("final_spam_destiny", 1, t.integer(-4, 1), BANK, "Destiny of spam (kill level).")
setting("final_bad_header_destiny", 1, t.integer(-4, 1), BANK,
        "Destiny of mail with a bad header section.")
setting("final_destiny_maps_by_ccat", {}, t.mapping, BANK,
        "Destiny by content category ('9', '4,2', ...): overrides the final_*_destiny values.",
        sigil="%")
setting("smtp_reason_by_ccat", {}, t.mapping, BANK,
        "Reply reason text by content category (%n log id, %F banned part, %V virus names); "
        "unset keys take amavis's defaults.", sigil="%")
setting("X_HEADER_TAG", "X-Virus-Scanned", t.string, GLOBAL,
        "Name of the header field that says the mail was scanned.")
setting("X_HEADER_LINE", None, t.string, BANK,
        "Body of the X_HEADER_TAG field (default 'amavis at $mydomain').",
        derive=lambda v: f"amavis at {v['mydomain']}")
setting("remove_existing_x_scanned_headers", 0, t.boolean, BANK,
        "Delete X_HEADER_TAG fields already in the message.")
setting("undecipherable_subject_tag", "***UNCHECKED*** ", t.string, BANK,
        "Subject prefix for local recipients of mail that could not be checked.")

# ---------------------------------------------------------------- virus
section("virus")
setting("av_scanners", [], t.sequence, BANK,
        "Primary virus scanners: [name, method, args, clean, infected, names] entries "
        "(pipeline.md 9.2; see amavisd/checks/virus.py).", sigil="@")
setting("av_scanners_backup", [], t.sequence, BANK,
        "Virus scanners tried only when every primary scanner failed (pipeline.md 9.4).",
        sigil="@")
setting("first_infected_stops_scan", None, t.boolean, BANK,
        "Stop calling further scanners (and sending further files to clamd) after a detection.")
setting("virus_scanners_failure_is_fatal", 1, t.boolean, BANK,
        "When every virus scanner failed: tempfail the message (451, our default) instead of "
        "passing it as UNCHECKED (amavis's default, 0).")
setting("av_scanner_timeout", 120, t.integer(1), GLOBAL,
        "Seconds one virus scanner may take (ours; amavis bounds it by child_timeout).")
setting("virus_name_to_spam_score_maps", [], t.sequence, BANK,
        "Virus names that are really spam, mapped to a spam score (pipeline.md 9.5).",
        sigil="@")

# ---------------------------------------------------------------- spam
section("spam")
setting("spam_scanners", [["SpamAssassin", "Amavis::SpamControl::SpamAssassin"]],
        t.sequence, GLOBAL,
        "Spam scanners, each [name, module, options...]: SpamdClient, SpamAssassin (served "
        "by spamd) or RspamdClient (docs/spam.md).", sigil="@")
setting("spamd_address", ["127.0.0.1:783", "[::1]:783"], t.string_list, GLOBAL,
        "Where spamd listens: host:port, [ipv6]:port or a Unix socket path, tried in order.",
        sigil="@")
setting("spamd_connect_timeout", 10, t.number, GLOBAL, "Seconds to connect to spamd.")
setting("spamd_timeout", 60, t.number, GLOBAL,
        "Seconds one spamd check may take in all (connect, send, reply).")
setting("rspamd_timeout", 60, t.number, GLOBAL,
        "Seconds one rspamd check may take unless its entry has a timeout option.")
setting("sa_mail_body_size_limit", None, t.integer(0), BANK,
        "Message body bytes sent to spamd; longer mail is truncated (undef: whole message).")
for _lvl, _ccat in (("tag", "CC_CLEAN,1: X-Spam-* header fields"),
                    ("tag2", "CC_SPAMMY: X-Spam-Flag YES and the spam subject tag"),
                    ("tag3", "CC_SPAMMY,1"), ("kill", "CC_SPAM: final_spam_destiny")):
    setting(f"sa_{_lvl}_level_deflt", None, t.number, BANK,
            f"Default spam {_lvl} level ({_ccat}).")
    setting(f"spam_{_lvl}_level_maps", None, t.sequence, BANK,
            f"Per-recipient spam {_lvl} level (lookup tables; default sa_{_lvl}_level_deflt).",
            sigil="@", derive=lambda v, k=_lvl: _legacy_table(v[f"sa_{k}_level_deflt"]))
setting("sa_dsn_cutoff_level", None, t.number, BANK,
        "Spam level at or above which no DSN is sent for blocked spam.")
setting("sa_crediblefrom_dsn_cutoff_level", None, t.number, BANK,
        "DSN cutoff level for mail whose sender looks credible.")
setting("spam_dsn_cutoff_level_maps", None, t.sequence, BANK,
        "Per-recipient DSN cutoff level (lookup tables; default sa_dsn_cutoff_level).",
        sigil="@",
        derive=lambda v: _legacy_table(v["sa_dsn_cutoff_level"]))
setting("spam_dsn_cutoff_level_bysender_maps", None, t.sequence, BANK,
        "Per-sender DSN cutoff level (lookup tables; default sa_dsn_cutoff_level).",
        sigil="@",
        derive=lambda v: _legacy_table(v["sa_dsn_cutoff_level"]))
setting("sa_quarantine_cutoff_level", None, t.number, BANK,
        "Spam level at or above which spam is not quarantined.")
setting("spam_quarantine_cutoff_level_maps", None, t.sequence, BANK,
        "Per-recipient quarantine cutoff level (default sa_quarantine_cutoff_level).",
        sigil="@", derive=lambda v: _legacy_table(v["sa_quarantine_cutoff_level"]))
setting("sa_spam_subject_tag1", None, t.string, BANK,
        "Subject prefix at or above the tag level (CC_CLEAN,1), e.g. '***Possible Spam*** '.")
setting("sa_spam_subject_tag", None, t.string, BANK,
        "Subject prefix at or above the tag2 level (CC_SPAMMY), e.g. '***SPAM*** '.")
setting("spam_subject_tag_maps", None, t.sequence, BANK,
        "Per-recipient subject tag for CC_CLEAN,1 (default sa_spam_subject_tag1).", sigil="@",
        derive=lambda v: _legacy_table(v["sa_spam_subject_tag1"]))
setting("spam_subject_tag2_maps", None, t.sequence, BANK,
        "Per-recipient subject tag for CC_SPAMMY (default sa_spam_subject_tag).", sigil="@",
        derive=lambda v: _legacy_table(v["sa_spam_subject_tag"]))
setting("spam_subject_tag3_maps", [], t.sequence, BANK,
        "Per-recipient subject tag for CC_SPAMMY,1 (tag3 level).", sigil="@")
setting("sa_spam_level_char", "*", t.string, BANK,
        "Character repeated in X-Spam-Level (empty: no X-Spam-Level field).")
setting("whitelist_sender_maps", [], t.sequence, BANK,
        "Senders (envelope or From) never treated as spam: hard whitelist (lookup tables).",
        sigil="@")
setting("blacklist_sender_maps", [], t.sequence, BANK,
        "Senders (envelope or From) always treated as spam: hard blacklist (lookup tables).",
        sigil="@")
setting("per_recip_whitelist_sender_lookup_tables", None, t.mapping, GLOBAL,
        "Recipient -> sender whitelist table, asked before whitelist_sender_maps.",
        sigil="%")
setting("per_recip_blacklist_sender_lookup_tables", None, t.mapping, GLOBAL,
        "Recipient -> sender blacklist table, asked before blacklist_sender_maps.",
        sigil="%")
setting("score_sender_maps", [], t.sequence, BANK,
        "Soft white/blacklisting: recipient tables of sender -> score added to the spam level.",
        sigil="@")
setting("remove_existing_spam_headers_maps", [1], t.sequence, BANK,
        "Recipients for whom X-Spam-* fields already in the message are removed.", sigil="@")

# ---------------------------------------------------------------- quarantine
section("quarantine")
setting("quarantine_subdir_levels", None, t.integer(0, 1), GLOBAL,
        "With 1, quarantine files go into a subfolder named by the first character of mail_id.")
for _kind, _method in (("virus", "local:virus-%m"), ("banned_files", "local:banned-%m"),
                       ("unchecked", None), ("spam", "local:spam-%m.gz"),
                       ("bad_header", "local:badh-%m"), ("clean", None), ("archive", None)):
    setting(f"{_kind}_quarantine_method", _method, t.delivery_method, BANK,
            f"Where {_kind.replace('_', ' ')} mail is quarantined (e.g. local:name-%m).")
for _kind in ("virus", "banned", "unchecked", "spam", "bad_header", "clean", "archive"):
    setting(f"{_kind}_quarantine_to_maps", [f"{_kind.replace('_', '-')}-quarantine"],
            t.sequence, BANK,
            f"Quarantine address for {_kind.replace('_', ' ')} mail, per recipient.", sigil="@")
setting("quarantine_method_by_ccat", {}, t.mapping, BANK,
        "Quarantine method by content category: overrides the *_quarantine_method values.",
        sigil="%")
setting("quarantine_to_maps_by_ccat", {}, t.mapping, BANK,
        "Quarantine address tables by content category (overrides).", sigil="%")
setting("local_delivery_aliases", None, t.mapping, GLOBAL,
        "Local part -> mailbox for local: delivery (default: the quarantine names).", sigil="%")
setting("mailfrom_to_quarantine", None, t.string, BANK,
        "Envelope sender of quarantined copies (default: the original sender).")
setting("hdrfrom_notify_sender", None, t.string, BANK,
        "From of DSNs (default '\"Content-filter at <myhostname>\" <postmaster@<myhostname>>').")
setting("viruses_that_fake_sender_maps", [1], t.sequence, BANK,
        "Virus names for which no DSN is sent (the sender is forged).", sigil="@")
setting("dsn_return_full_message", 1, t.boolean, BANK,
        "RET=FULL returns the whole message in a DSN (amavis returns only the header).")

setting("hdrfrom_notify_recip", None, t.string, BANK,
        "From of recipient notices and the Resent-From of released mail "
        "(default like hdrfrom_notify_sender).")

# ---------------------------------------------------------------- release
section("release")
setting("auth_required_release", 1, t.boolean, BANK,
        "A release/requeue/report request must carry the message's secret_id.")
setting("release_format", "resend", t.choice("resend", "attach", "plain", "arf", "dsn"), BANK,
        "How released mail is sent: resend (the original with Resent-* fields) or wrapped.")
setting("report_format", "arf", t.choice("resend", "attach", "plain", "arf", "dsn"), BANK,
        "How 'report' requests are sent.")
setting("attachment_password", None, t.string, BANK,
        "Password of the zip a released message is wrapped in (attach format).")
setting("attachment_outer_name", "msg-%m.zip", t.string, BANK,
        "Name of the zip attachment (attach format).")
setting("attachment_email_name", "msg-%m.eml", t.string, BANK,
        "Name of the message inside the attachment (attach format).")

# ---------------------------------------------------------------- dkim
section("dkim")
setting("enable_dkim_verification", None, t.boolean, BANK,
        "Verify DKIM signatures: Authentication-Results for local recipients, dkim_sd= in "
        "the log, author_to_policy_bank_maps, signer_reputation_maps (Debian: 0).")
setting("enable_dkim_signing", None, t.boolean, BANK,
        "DKIM-sign originating mail whose author (or sender) domain has a dkim_key().")
setting("dkim_signing_keys_list", [], t.sequence, GLOBAL,
        "Signing keys, filled by dkim_key('domain', 'selector', '/path/key.pem', tag=value) "
        "calls in the config (read as root at startup); not assigned directly.", sigil="@")
setting("dkim_signature_options_bysender_maps", [], t.sequence, BANK,
        "Per author/sender lookup tables of signature options (d, s, a, c, ttl, x, i, q); "
        "the most specific value of each tag wins.", sigil="@")
setting("signed_header_fields", {}, t.mapping, BANK,
        "Header fields to sign, lower-case name -> 0/1/2 (2: also oversigned); unset names "
        "take amavis's defaults (From Date Subject Content-Type 2, To Cc Sender 0, ...).",
        sigil="%")
setting("dkim_minimum_key_bits", 1024, t.integer(0), BANK,
        "Valid signatures with a shorter RSA key load no author bank and get no reputation.")
setting("myauthservid", None, t.string, BANK,
        "The authserv-id of our Authentication-Results fields (default: myhostname).")
setting("reputation_factor", 0.2, t.number, BANK,
        "Weight 0..1 of a signing domain's reputation in the spam level (0: off).")
setting("signer_reputation_maps", [], t.sequence, BANK,
        "Signing domain ('@example.com') -> fixed spam score the level is pulled "
        "towards (reputation_factor).", sigil="@")
setting("dkim_dns_timeout", 10, t.number, GLOBAL,
        "Seconds all DKIM key lookups of one message may take together; a key not "
        "fetched in time gives temperror (ours: amavis bounds it by child_timeout).")
setting("dkim_dns_servers", [], t.string_list, GLOBAL,
        "Name servers for DKIM key lookups, 'ip' or 'ip:port' (ours; empty: the "
        "system's /etc/resolv.conf).", sigil="@")

# ---------------------------------------------------------------- templates
section("templates")
for _name, _file, _what in (
        ("notify_sender_templ", "template-dsn.txt", "DSN (bounce) text part"),
        ("notify_virus_sender_templ", "template-virus-sender.txt",
         "DSN text for VIRUS and BANNED mail"),
        ("notify_spam_sender_templ", "template-spam-sender.txt", "DSN text for SPAM"),
        ("notify_virus_admin_templ", "template-virus-admin.txt",
         "admin notification (all but spam)"),
        ("notify_spam_admin_templ", "template-spam-admin.txt", "spam admin notification"),
        ("notify_virus_recips_templ", "template-virus-recipient.txt",
         "recipient notification"),
        ("notify_release_templ", "template-release-quarantine.txt",
         "text of a release in the attach format"),
        ("notify_report_templ", "template-problem-feedback.txt",
         "text of a report (arf, attach, plain)"),
        ("notify_autoresp_templ", "template-auto-response.txt", "auto-response text")):
    setting(_name, None, t.string, BANK,
            f"Template of the {_what} (docs/templates.md); undef: conf/templates/{_file}.")
setting("notify_spam_recips_templ", "", t.string, BANK,
        "Template of spam recipient notifications; empty: none are sent.")
setting("macro_tests_sanity_limit", 50, t.integer(0), GLOBAL,
        "Template macros T/TESTS list at most this many tests, then '...' (0: all).")

# ---------------------------------------------------------------- notifications
section("notifications")
for _kind, _what in (("virus", "viruses and unchecked contents"),
                     ("banned", "banned contents (default: virus_admin)"),
                     ("spam", "spam"), ("bad_header", "bad header sections"),
                     ("newvirus", "viruses not seen before (counts in the stats segment)")):
    setting(f"{_kind}_admin", None, t.string, GLOBAL,
            f"Legacy: the administrator notified about {_what}; the default table of "
            f"{_kind}_admin_maps (Debian: virus_admin = postmaster@$mydomain).")
for _kind, _default in (
        ("virus", lambda v: _legacy_table(v["virus_admin"])),
        ("banned", lambda v: [x for x in (v["banned_admin"], v["virus_admin"]) if x is not None]),
        ("spam", lambda v: _legacy_table(v["spam_admin"])),
        ("bad_header", lambda v: _legacy_table(v["bad_header_admin"])),
        ("newvirus", lambda v: _legacy_table(v["newvirus_admin"]))):
    setting(f"{_kind}_admin_maps", None, t.sequence, BANK,
            f"Per-recipient administrator address for {_kind.replace('_', ' ')} notifications "
            f"(lookup tables; default: {_kind}_admin).", sigil="@", derive=_default)
for _kind, _what in (("virus", "infected"), ("banned", "banned"), ("badh", "bad-header")):
    setting(f"warn{_kind}recip", None, t.boolean, GLOBAL,
            f"Legacy: the default table of warn{_kind}recip_maps.")
    setting(f"warn{_kind}recip_maps", None, t.sequence, BANK,
            f"Recipients told that {_what} mail for them was held (lookup tables; default: "
            f"warn{_kind}recip).", sigil="@",
            derive=lambda v, k=_kind: _legacy_table(v[f"warn{k}recip"]))
setting("warn_offsite", None, t.boolean, BANK,
        "Recipient notifications also go to recipients outside local_domains_maps.")
setting("spam_notifyadmin_cutoff_level_maps", [], t.sequence, BANK,
        "Per-recipient spam level at or above which no spam admin notification is sent.",
        sigil="@")
setting("admin_maps_by_ccat", {}, t.mapping, BANK,
        "Administrator tables by content category ('9', '4,2', ...): overrides the "
        "*_admin_maps (docs/notifications.md).", sigil="%")
setting("warnrecip_maps_by_ccat", {}, t.mapping, BANK,
        "Recipient-notification tables by content category: overrides the warn*recip_maps.",
        sigil="%")
for _who in ("admin", "spamadmin", "recip"):
    setting(f"mailfrom_notify_{_who}", None, t.string, BANK,
            f"Envelope sender of {_who} notifications (default: the address of "
            f"hdrfrom_notify_{_who}).")
for _who in ("admin", "spamadmin"):
    setting(f"hdrfrom_notify_{_who}", None, t.string, BANK,
            f"From of {_who} notifications (default: '\"Content-filter at <myhostname>\" "
            f"<mailfrom_notify_{_who}>', else hdrfrom_notify_sender).")
setting("dsn_bcc", None, t.string, BANK, "A blind copy of every DSN goes to this address.")
setting("hdr_encoding", "UTF-8", t.string, BANK,
        "Charset of RFC 2047 encoded words in the header fields of notices and DSNs.")
setting("hdr_encoding_qb", "Q", t.choice("Q", "B"), BANK,
        "RFC 2047 encoding of those words: Q (quoted-printable) or B (base64).")
setting("bdy_encoding", "UTF-8", t.string, BANK,
        "Charset of the text part of notices and DSNs when it is not plain ASCII.")

# ---------------------------------------------------------------- sql
section("sql")
setting("lookup_sql_dsn", [], t.sequence, GLOBAL,
        "SQL lookups (users, policy, wblist, mailaddr): [dsn, user, password] entries, "
        "tried in order.", sigil="@")
setting("storage_sql_dsn", [], t.sequence, GLOBAL,
        "SQL logging and sql: quarantine (msgs, msgrcpt, maddr, quarantine): "
        "[dsn, user, password] entries.", sigil="@")
setting("sql_clause", {}, t.mapping, GLOBAL,
        "Overrides of the SQL statements by name (sel_policy, sel_wblist, ins_msg, ...).",
        sigil="%")
setting("sql_select_policy", None, t.string, GLOBAL,
        "Legacy name of $sql_clause{sel_policy}.")
setting("sql_select_white_black_list", None, t.string, GLOBAL,
        "Legacy name of $sql_clause{sel_wblist}.")
setting("sql_quarantine_chunksize_max", 16384, t.integer(1), GLOBAL,
        "Bytes per row of the quarantine table.")
setting("sql_store_info_for_all_msgs", 1, t.boolean, GLOBAL,
        "Write msgs/msgrcpt rows for every message (0: only quarantined ones).")
setting("sql_allow_8bit_address", None, t.boolean, GLOBAL,
        "Store and look up non-ASCII addresses as they are (otherwise 8-bit chars become ?).")
setting("timestamp_fmt_mysql", None, t.boolean, GLOBAL,
        "Write msgs.time_iso in MySQL's format (YYYYMMDDTHHMMSS without a Z).")
setting("sql_schema_version", 2.013, t.number, GLOBAL,
        "Schema generation of the storage tables (below 2.007: no 2.7 columns).")
setting("sql_lookups_no_at_means_domain", 0, t.boolean, GLOBAL,
        "A users.email without @ is a domain, not a local mailbox.")
setting("lookup_maps_imply_sql_and_ldap", 1, t.boolean, GLOBAL,
        "Put the SQL field lookups in front of the per-recipient maps when SQL lookups are on.")
setting("database_sessions_persistent", 1, t.boolean, GLOBAL,
        "Keep each child's SQL connection open between messages.")
setting("partition_tag", None, t.anything, BANK,
        "Value of the partition_tag column of the storage tables (also a lookup table).",
        aliases=("sql_partition_tag",))

# ---------------------------------------------------------------- logging
section("logging")
setting("log_level", 0, t.integer(-5, 5), BANK, "Verbosity 0-5 (-d on the command line).")
setting("DO_SYSLOG", None, t.boolean, GLOBAL, "Log to syslog.", aliases=("do_syslog",))
setting("LOGFILE", None, t.string, GLOBAL,
        "Log to this file when not to syslog (otherwise stderr).", aliases=("logfile",))
setting("syslog_ident", "amavis", t.string, BANK, "Syslog ident.")
setting("syslog_facility", "mail", t.string, BANK, "Syslog facility name.")
setting("syslog_priority", None, t.string, GLOBAL,
        "Deprecated since 2.7.0 and ignored (Debian still sets it).", aliases=("SYSLOG_LEVEL",))
setting("logline_maxlen", 980, t.integer(50), GLOBAL, "Syslog lines are split above this.")
# -- log templates, the JSON event and Redis (docs/logging.md)
setting("log_short_templ", default_log_template("log_short_templ"), t.string, GLOBAL,
        "The built-in main log entry (amavis's short form); use it on the right-hand side.")
setting("log_verbose_templ", default_log_template("log_verbose_templ"), t.string, GLOBAL,
        "The built-in verbose main log entry: log_templ = log_verbose_templ.")
setting("log_templ", default_log_template("log_short_templ"), t.string, BANK,
        "Template of the main per-message log entry at level 0 (empty or undef: none).")
setting("log_recip_templ", None, t.string, BANK,
        "Template of one level-0 log entry per recipient; undef (Debian's and our "
        "default, amavis's own is conf/templates/log-recip.txt): none.")
setting("syslog_socket", "/dev/log", t.string, GLOBAL,
        "Unix socket of the local syslog daemon (ours; amavis uses the C library's).")
setting("storage_redis_dsn", [], t.sequence, GLOBAL,
        "Redis servers: {'server': 'host:port' or '/path', 'db_id': n, 'password': ...} "
        "entries, the first that answers is used.", sigil="@")
setting("redis_logging_key", None, t.string, BANK,
        "Redis list the JSON event of each message is pushed to (with storage_redis_dsn "
        "and redis_logging_queue_size_limit).")
setting("redis_logging_queue_size_limit", None, t.integer(0), GLOBAL,
        "Entries the Redis event list keeps (the newest); undef or 0: no events pushed.")
setting("nanny_details_level", 1, t.integer(0, 2), GLOBAL,
        "Which child states reach the stats segment (1: the main ones, 2: all).")
setting("DEBUG", None, t.boolean, GLOBAL, "Debug mode (set by 'amavisd debug').")


def defaults() -> dict[str, Any]:
    """Fresh copies of every default (mutable defaults are copied, never shared)."""
    import copy

    return {name: copy.deepcopy(s.default) for name, s in REGISTRY.items()}


BANK_KEYS = frozenset(name for name, s in REGISTRY.items() if s.scope == BANK)


@dataclass
class Origins:
    """Where each value came from: 'default', 'derived', 'file:line' or 'command line'."""

    where: dict[str, str] = field(default_factory=dict)
