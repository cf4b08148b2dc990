# tests: amavisd/templates/loader.py amavisd/templates/notice.py
"""Debian's en_US templates, our defaults and the Perl daemon's golden notifications.

* Every file of /etc/amavis/en_US loads (``read_l10n_templates`` and its charset file)
  and expands for each kind of notice: virus, banned, bad header, spam, a DSN of
  clean mail, a release; the lines that carry the verdict are asserted.
* Our defaults in conf/templates expand for the same notices, with the header fields
  of Debian's counterpart (same MIME structure), and share no sentence with them.
* The postmaster notifications of two golden cases (t/data/golden-templates) are
  rebuilt from the case's own data: its log line, reply and input message, decoded
  and banned-checked by our own code.  The anchor's Perl daemon used amavis's
  built-in template (its config does not call read_l10n_templates): expanding that
  text, read from the installed Amavis.pm, gives the golden text exactly; expanding
  Debian's file gives it with the two differences that file has.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace

import pytest

from amavisd.checks import banned
from amavisd.config.model import Config
from amavisd.config.pyconf import load_python_config
from amavisd.config.registry import REGISTRY
from amavisd.constants import D_BOUNCE, D_DISCARD, D_PASS
from amavisd.message import Message, Recipient
from amavisd.templates import (
    DEFAULT_FILES,
    L10N_FILES,
    RecipientFacts,
    TemplateContext,
    default_template,
    read_l10n_templates,
    read_text,
    render,
    split_header_fields,
    split_notice,
    template_setting_for,
    template_text,
)
from amavisd.templates.loader import default_templates_dir, read_charset
from amavisd.unpack import decode_message
from amavisd.unpack.context import DecodeLimits

EN_US = Path("/etc/amavis/en_US")
AMAVIS_PM = Path("/usr/share/perl5/Amavis.pm")
GOLDEN = Path(__file__).resolve().parent.parent / "data" / "golden-templates"
#: Debian's file for each template setting (the l10n names and the three extra files).
DEBIAN_FILES = dict(DEFAULT_FILES)


def need(path: Path) -> None:
    if not path.exists():
        pytest.skip(f"{path} is not installed (amavisd-new); CI installs it")


# ------------------------------------------------------------------ loading
def test_read_l10n_templates_reads_the_six_files_with_their_charset() -> None:
    need(EN_US)
    texts = read_l10n_templates("en_US", "/etc/amavis")
    assert sorted(texts) == sorted(L10N_FILES)
    assert read_charset(EN_US) == "ascii"
    for name, filename in L10N_FILES.items():
        assert texts[name] == (EN_US / filename).read_text(encoding="ascii")
    assert read_l10n_templates(str(EN_US)) == texts           # the one-argument form


def test_a_bad_octet_is_shown_not_fatal(tmp_path: Path) -> None:
    """Like Perl's :encoding layer, an octet outside the charset becomes \\xHH text."""
    (tmp_path / "charset").write_text("# comment\nascii   # or iso-8859-1\nignored\n")
    for filename in L10N_FILES.values():
        (tmp_path / filename).write_bytes(b"Subject: caf\xe9\n\nbody\n")
    texts = read_l10n_templates(str(tmp_path))
    assert texts["notify_sender_templ"] == "Subject: caf\\xE9\n\nbody\n"


def test_an_unknown_charset_is_a_config_error(tmp_path: Path) -> None:
    from amavisd.errors import ConfigError

    (tmp_path / "charset").write_text("no-such-charset\n")
    for filename in L10N_FILES.values():
        (tmp_path / filename).write_text("x")
    with pytest.raises(ConfigError, match="no-such-charset"):
        read_l10n_templates(str(tmp_path))


def test_template_settings_are_registered_and_default_to_ours() -> None:
    for name in DEFAULT_FILES:
        assert REGISTRY[name].section == "templates" and REGISTRY[name].default is None
    assert REGISTRY["notify_spam_recips_templ"].default == ""
    settings = SimpleNamespace(notify_virus_admin_templ=None, notify_sender_templ="mine %n")
    assert template_text(settings, "notify_virus_admin_templ") == \
        (default_templates_dir() / "template-virus-admin.txt").read_text(encoding="utf-8")
    assert template_text(settings, "notify_sender_templ") == "mine %n"
    assert template_text(SimpleNamespace(notify_spam_recips_templ=""),
                         "notify_spam_recips_templ") == ""


def test_python_config_can_read_debian_templates(tmp_path: Path) -> None:
    need(EN_US)
    conf = tmp_path / "amavisd.conf"
    conf.write_text("read_l10n_templates('en_US', '/etc/amavis')\n"
                    "notify_release_templ = read_text('/etc/amavis/en_US/"
                    "template-release-quarantine.txt')\n")
    config = Config()
    load_python_config(conf, config)
    assert config.notify_virus_admin_templ == (EN_US / "template-virus-admin.txt").read_text()
    assert config.notify_release_templ.startswith("#\n# =====")


def test_perl_config_read_l10n_templates_fills_the_settings(tmp_path: Path) -> None:
    need(EN_US)
    if shutil.which("perl") is None:
        pytest.skip("perl is not installed")
    from amavisd.config.perlconf import load_perl_config

    conf = tmp_path / "amavisd.conf"
    conf.write_text("use strict;\nread_l10n_templates('en_US', '/etc/amavis');\n1;\n")
    config = Config()
    load_perl_config([str(conf)], config)
    assert config.notify_sender_templ == (EN_US / "template-dsn.txt").read_text()
    assert config.notify_spam_admin_templ == (EN_US / "template-spam-admin.txt").read_text()


def test_template_for_each_kind_of_notice() -> None:
    """amavis's %notify_*_templ_by_ccat defaults (pipeline.md 18, 19)."""
    assert template_setting_for("sender", ["9", "1"]) == "notify_virus_sender_templ"
    assert template_setting_for("sender", ["8"]) == "notify_virus_sender_templ"
    assert template_setting_for("sender", ["6", "5", "1"]) == "notify_spam_sender_templ"
    assert template_setting_for("sender", ["4,2", "4", "1"]) == "notify_sender_templ"
    assert template_setting_for("admin", ["6"]) == "notify_spam_admin_templ"
    assert template_setting_for("admin", ["5", "1"]) == "notify_virus_admin_templ"
    assert template_setting_for("recips", ["6"]) == "notify_spam_recips_templ"
    assert template_setting_for("release", ["9"]) == "notify_release_templ"


# ------------------------------------------------------------------ the notices
HEADER = (b"Received: from mail.example.org (mail.example.org [198.51.100.7])\n"
          b"\tby mx.example.com (Postfix) with ESMTPS id 4AbC\n"
          b"\tfor <bob@example.com>; Mon, 30 Nov 2026 03:02:24 +0000\n"
          b"From: Alice Example <alice@example.org>\n"
          b"To: Bob Example <bob@example.com>\n"
          b"Subject: Quarterly report\n"
          b"Date: Mon, 30 Nov 2026 03:02:24 +0000\n"
          b"Message-ID: <m1@example.org>\n"
          b"X-Mailer: Microsoft Outlook Express 6.00.2900.5512\n\n")


def scenario(kind: str) -> TemplateContext:
    """A realistic context for each kind of notice, one local recipient."""
    base = TemplateContext(
        log_id="4711-03", mail_id="AbCdEfGhIjKl", myhostname="mx.example.com",
        rx_time=1796007747, tz=UTC, sender="alice@example.org",
        header=split_header_fields(HEADER), client_addr="198.51.100.7", client_port="51515",
        client_name="mail.example.org", mta_addr="127.0.0.1", mta_port=40404,
        mta_helo="mx.example.com", protocol="ESMTP", size=2345,
        notify_from='"Content-filter at mx.example.com" <postmaster@mx.example.com>',
        notify_to=["<postmaster@example.com>"])
    bob = RecipientFacts("bob@example.com", is_local=True, destiny=D_DISCARD, done=True)
    if kind == "virus":
        return replace(base, contents_category=["9", "1"], blocking_ccat="9",
                       virus_names=["Eicar-Test-Signature"], detecting_scanners=["ClamAV-clamd"],
                       av_output="p002: Eicar-Test-Signature FOUND\n",
                       quarantined_to=["virus-AbCdEfGhIjKl"], recipients=[replace(
                           bob, contents_category=["9", "1"], blocking_ccat="9",
                           smtp_response="250 2.7.0 Ok, discarded, id=4711-03 - INFECTED: "
                                         "Eicar-Test-Signature")])
    if kind == "banned":
        return replace(base, contents_category=["8", "1"], blocking_ccat="8",
                       quarantined_to=["banned-AbCdEfGhIjKl"], recipients=[replace(
                           bob, contents_category=["8", "1"], blocking_ccat="8",
                           banning_reason_short=".exe,setup.exe",
                           smtp_response="250 2.7.0 Ok, discarded, id=4711-03 - BANNED: "
                                         ".exe,setup.exe")])
    if kind == "badheader":
        return replace(base, contents_category=["4,2", "4", "1"],
                       bad_headers=["Non-encoded 8-bit data (char C3 hex) in message header "
                                    "'Subject': Subject: Gr\\xC3\\xBC..."],
                       recipients=[replace(bob, destiny=D_PASS, contents_category=[
                           "4,2", "4", "1"], smtp_response="250 2.0.0 Ok, id=4711-03")])
    if kind == "spam":
        return replace(base, contents_category=["6", "5", "1,1", "1"], blocking_ccat="6",
                       spam_summary="Content analysis details:   (1002.3 points)\n\n"
                                    " pts rule name\n1000 GTUBE\n",
                       recipients=[replace(bob, contents_category=["6", "5", "1,1", "1"],
                                           blocking_ccat="6", spam_level=1002.3,
                                           tag2_level=6.31,
                                           smtp_response="250 2.7.0 Ok, discarded, "
                                                         "id=4711-03 - spam")])
    if kind == "dsn":
        return replace(base, recipients=[
            replace(bob, destiny=D_PASS, dsn_notify=["SUCCESS"],
                    smtp_response="250 2.0.0 Ok: queued as 4QJ1"),
            RecipientFacts("carol@example.net", destiny=D_BOUNCE, done=True,
                           remote_mta="mx.example.net",
                           smtp_response="554 5.7.1 Rejected by the next hop")])
    if kind == "release":
        return replace(base, recipients=[bob], report_format="attach",
                       attachment_password_setting="Pw9x", feedback_type="abuse")
    raise AssertionError(kind)


KINDS = ["virus", "banned", "badheader", "spam", "dsn", "release"]
#: What Debian's own text says in each case: (file, kind) -> lines that must be present.
DEBIAN_SAYS = {
    ("template-virus-admin.txt", "virus"): [
        "Subject: VIRUS (Eicar-Test-Signature) in mail FROM [198.51.100.7]:51515 "
        "<alice@example.org>", "A virus was found: Eicar-Test-Signature",
        "Scanner detecting a virus: ClamAV-clamd", "Content type: Virus",
        "The message has been quarantined as: virus-AbCdEfGhIjKl",
        "  p002: Eicar-Test-Signature FOUND"],
    ("template-virus-admin.txt", "banned"): [
        "Subject: BANNED contents (.exe,setup.exe) in mail FROM [198.51.100.7]:51515 "
        "<alice@example.org>", "No viruses were found.", "Banned name: .exe,setup.exe"],
    ("template-virus-admin.txt", "badheader"): [
        "Subject: INVALID HEADER in mail FROM [198.51.100.7]:51515 <alice@example.org>",
        "Bad header:", "Content type: BadHdr8bit", "The message WILL BE relayed to:"],
    ("template-spam-admin.txt", "spam"): [
        "Subject: Spam FROM [198.51.100.7]:51515 <alice@example.org>", "Content type: Spam",
        "Spam scanner report:", "1000 GTUBE",
        "X-Mailer: Microsoft Outlook Express 6.00.2900.5512"],
    ("template-spam-sender.txt", "spam"): [
        "Subject: Considered UNSOLICITED BULK EMAIL, apparently from you",
        "In-Reply-To: <m1@example.org>", "Delivery of the email was stopped!"],
    ("template-virus-sender.txt", "virus"): [
        "Subject: VIRUS in message apparently from you (Eicar-Test-Signature)",
        "Message-ID: <VSAbCdEfGhIjKl@mx.example.com>", "VIRUS ALERT",
        "    virus: Eicar-Test-Signature", "Please check your system for viruses,"],
    ("template-virus-sender.txt", "banned"): [
        "Subject: BANNED contents from you (.exe,setup.exe)", "BANNED CONTENTS ALERT",
        "    banned name: .exe,setup.exe",
        "The message has been blocked because it contains a component"],
    ("template-virus-recipient.txt", "virus"): [
        "Subject: VIRUS (Eicar-Test-Signature) in mail TO YOU from <alice@example.org>",
        "To: Bob Example <bob@example.com>", "VIRUS ALERT", "claiming to be: <alice@example.org>"],
    ("template-dsn.txt", "badheader"): [
        "Subject: Delivery status notification, invalid header section: unencoded 8-bit "
        "character", "Your message WAS SUCCESSFULLY RELAYED to:",
        "INVALID HEADER: INVALID 8-BIT CHARACTERS IN HEADER SECTION",
        "WHAT IS AN INVALID CHARACTER IN A MAIL HEADER SECTION?",
        "  If using Microsoft Outlook Express as your MUA, make sure its"],
    ("template-dsn.txt", "dsn"): [
        "Subject: Delivery status notification", "Your message WAS SUCCESSFULLY RELAYED to:",
        "  <bob@example.com>",
        "and you explicitly requested a delivery status notification on success.",
        "The message WAS NOT relayed to:", "  <carol@example.net>: [mx.example.net] said:",
        "   554 5.7.1 Rejected by the next hop", "Message-ID: <DSNAbCdEfGhIjKl@mx.example.com>"],
    ("template-release-quarantine.txt", "release"): [
        "Subject: [released message] Quarterly report", "  Pw9x",
        "has been wrapped in a password-protected ZIP archive."],
    ("template-problem-feedback.txt", "release"): [
        "This is an e-mail abuse report for a message received from",
        "A complete original message is attached."],
    ("template-auto-response.txt", "release"): [
        "Subject: Auto: autoresponse to: <alice@example.org>", "Auto-Submitted: auto-replied"],
}


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("filename", sorted(set(DEBIAN_FILES.values())))
def test_debian_template_expands(filename: str, kind: str) -> None:
    """Each Debian en_US file expands for each kind of notice; the verdict lines are there."""
    need(EN_US)
    text = render(read_text(EN_US / filename, read_charset(EN_US)), scenario(kind))
    lines = text.splitlines()
    for wanted in DEBIAN_SAYS.get((filename, kind), []):
        assert wanted in lines or any(wanted in line for line in lines), wanted
    notice = split_notice(text)
    assert notice.body.strip() != ""
    assert "[" not in text.replace("[198.51.100.7]", "").replace("[mx.example.net]", "") \
        .replace("[released message]", "").replace("[127.0.0.1]", "").replace("[...]", "")


def _field_names(text: str) -> list[str]:
    return [name for name, _ in split_notice(text).fields]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("setting", sorted(DEFAULT_FILES))
def test_our_default_has_debians_header_structure(setting: str, kind: str) -> None:
    """Our default expands for every notice, with the header fields of Debian's file
    (same names in the same order, same Message-ID prefix)."""
    ctx = scenario(kind)
    ours = render(default_template(setting), ctx)
    assert split_notice(ours).body.strip() != ""
    if not EN_US.exists():
        return
    debian = render(read_text(EN_US / DEBIAN_FILES[setting], "ascii"), scenario(kind))
    assert _field_names(ours) == _field_names(debian)
    assert split_notice(ours).get("Message-ID") == split_notice(debian).get("Message-ID")


def _sentences(text: str) -> set[str]:
    """Plain-text runs of four words or more (macro syntax removed)."""
    plain = re.sub(r"\[[?~:@=\"]?|\]|\||%#?.|\\.", "\n", text)
    runs = set()
    for piece in plain.splitlines():
        words = piece.split()
        if len(words) >= 4 and not piece.lstrip().startswith("#"):
            runs.add(" ".join(words))
    return runs


def test_our_defaults_use_our_own_wording() -> None:
    need(EN_US)
    theirs = set().union(*(_sentences((EN_US / f).read_text()) for f in DEBIAN_FILES.values()))
    if AMAVIS_PM.exists():
        theirs |= _sentences(AMAVIS_PM.read_text(encoding="utf-8").split("\n__DATA__\n", 1)[1])
    ours = set().union(*(_sentences(default_template(s)) for s in DEFAULT_FILES))
    assert ours & theirs == set()


def test_hostile_subject_in_every_template() -> None:
    """A Subject made of template syntax reaches the notice literally."""
    subject = "[? %x |a|b] %% ]| [:uc|x] [=m|y]"
    ctx = replace(scenario("virus"), header=split_header_fields(
        HEADER.replace(b"Subject: Quarterly report", b"Subject: " + subject.encode())))
    for setting in DEFAULT_FILES:
        assert f"Subject: {subject}" in render(default_template(setting), ctx).splitlines()
    if EN_US.exists():
        text = render((EN_US / "template-virus-admin.txt").read_text(), ctx)
        assert f"Subject: {subject}" in text.splitlines()


# ------------------------------------------------------------------ golden notifications
def golden(case: str) -> dict[str, str]:
    """The sections of a golden case file."""
    text = (GOLDEN / f"{case}.txt").read_text()
    sections = dict(re.findall(r"^## ([^\n]+)\n(.*?)(?=^## |\Z)", text, re.S | re.M))
    return {k.split(" (")[0]: v for k, v in sections.items()}


def golden_notification(case: str) -> tuple[dict[str, str], str]:
    """The delivered notification: unfolded header fields and the text part."""
    sink = golden(case)["DELIVERED TO SINK: 1 message(s)"]
    head = sink.split("### message 1: delivered header section\n", 1)[1].split("\n\n", 1)[0]
    head = re.sub(r"\n(?=[ \t])", "", head)
    fields = dict(line.split(": ", 1) for line in head.splitlines())
    text_part = sink.split("Content-Transfer-Encoding: 7bit\n\n", 1)[1]
    return fields, text_part.split("\n------------=_", 1)[0]


def golden_context(case: str, tmp_path: Path) -> TemplateContext:
    """The notice's context from the golden case's own data and our own checks."""
    sections = golden(case)
    log_line = sections["LOG LINES"].strip()
    reply = sections["FINAL SMTP REPLY"].strip()
    message = sections["INPUT MESSAGE"]
    transcript = sections["SMTP TRANSCRIPT"]
    sender = re.search(r"C: MAIL FROM:<([^>]*)>", transcript).group(1)
    rcpt = re.search(r"C: RCPT TO:<([^>]*)>", transcript).group(1)
    log_id, verdict = re.search(r"\(([0-9-]+)\) Blocked (\w+)", log_line).groups()
    mail_id = re.search(r"mail_id: (\S+),", log_line).group(1)
    quarantine = re.search(r"quarantine: ([^,]+),", log_line).group(1)
    client = re.search(r"\} ?, \[([0-9.]+)\]", log_line).group(1)
    size = int(re.search(r"size: (\d+)", log_line).group(1))
    admin = re.search(r"X-Rcpt-Args: <([^>]+)>", sections["DELIVERED TO SINK: 1 message(s)"])
    myhostname = re.search(r"X-Mail-Args: <postmaster@([^>]+)>",
                           sections["DELIVERED TO SINK: 1 message(s)"]).group(1)
    date = re.search(r"^Date: (.+)$", sections["DELIVERED TO SINK: 1 message(s)"], re.M).group(1)
    rx_time = datetime.strptime(date, "%a, %d %b %Y %H:%M:%S %z (UTC)").timestamp()

    # decode and banned-check the input message with our own code (Debian's rules)
    spool = tmp_path / "email.txt"
    spool.write_text(message)
    parts = tmp_path / "parts"
    parts.mkdir()
    msg = Message(sender=sender, sender_quoted=sender, recipients=[Recipient(rcpt, rcpt)],
                  spool_path=spool, size=size, log_id=log_id)
    tree = decode_message(msg, parts, DecodeLimits())
    verdict_by_rcpt = banned.per_recipient(banned.run(
        tree, {rcpt: ["DEFAULT"]}, None, banned_rules=banned.BANNED_RULES))
    reason = verdict_by_rcpt[rcpt].banning_reason_short

    virus_names, av_output, ccats = None, None, ["8", "1"]
    if verdict == "INFECTED":
        name = re.search(r"INFECTED \(([^)]+)\)", log_line).group(1)
        leaf = next(p for p in tree.leaves() if "dat" in p.type_short)
        virus_names, ccats = [name], ["9", "8", "1"]
        av_output = f"{leaf.base_name}: {name} FOUND\n"          # clamd's answer line
    header_block = message.split("\n\n", 1)[0] + "\n\n"
    return TemplateContext(
        log_id=log_id, mail_id=mail_id, myhostname=myhostname, rx_time=rx_time, tz=UTC,
        sender=sender, size=size, header=split_header_fields(header_block.encode()),
        mta_addr=client, mta_helo="client.anchor.test", protocol="ESMTP",
        contents_category=ccats, blocking_ccat=ccats[0], virus_names=virus_names,
        av_output=av_output, detecting_scanners=["ClamAV-clamd"] if virus_names else [],
        quarantined_to=[f"/var/lib/amavis/virusmails/{quarantine}"],
        quarantine_dir="/var/lib/amavis/virusmails",
        recipients=[RecipientFacts(rcpt, is_local=True, destiny=D_DISCARD, done=True,
                                   smtp_response=reply, contents_category=ccats,
                                   blocking_ccat=ccats[0], banning_reason_short=reason)],
        notify_from=f'"Content-filter at {myhostname}" <postmaster@{myhostname}>',
        notify_to=[f"<{admin.group(1)}>"])


def builtin_template(index: int) -> str:
    """One of amavis's built-in templates, as amavisd reads its __DATA__ sections."""
    need(AMAVIS_PM)
    data = AMAVIS_PM.read_text(encoding="utf-8").split("\n__DATA__\n", 1)[1]
    return data.split("__DATA__\n")[index]


VIRUS_ADMIN = 5      # log_short, log_verbose, log_recip, dsn, virus_sender, virus_admin, ...


@pytest.mark.parametrize("case", ["eicar", "banned-exe-in-zip"])
def test_golden_notification_from_amavis_builtin_template(case: str, tmp_path: Path) -> None:
    fields, text_part = golden_notification(case)
    notice = split_notice(render(builtin_template(VIRUS_ADMIN), golden_context(case, tmp_path)))
    assert notice.body == text_part
    assert dict(notice.fields) == {k: fields[k] for k in
                                   ("From", "Date", "Subject", "To", "Message-ID")}


@pytest.mark.parametrize("case", ["eicar", "banned-exe-in-zip"])
def test_golden_notification_from_debian_template(case: str, tmp_path: Path) -> None:
    """Debian's template-virus-admin.txt: the golden text, but for two lines where its
    wording differs from the built-in one the anchor used:

    * it has no ``Received trace:`` line (its ``%e`` line is empty: no public IP);
    * it prints the not-relayed list as is, where the built-in text passes it
      through ``mail_addr_decode``, which lowercases everything after the ``@``.
    """
    need(EN_US)
    fields, text_part = golden_notification(case)
    expected = re.sub(r"\nReceived trace: [^\n]*\n", "", text_part)
    reply = golden(case)["FINAL SMTP REPLY"].strip()
    assert reply.lower() in expected
    expected = expected.replace(reply.lower(), reply)
    text = render((EN_US / "template-virus-admin.txt").read_text(),
                  golden_context(case, tmp_path))
    notice = split_notice(text)
    assert notice.body == expected
    assert dict(notice.fields) == {k: fields[k] for k in
                                   ("From", "Date", "Subject", "To", "Message-ID")}


def test_split_notice_follows_amavis_rules() -> None:
    notice = split_notice("Subject: a\n b\nX-Bad line\nFrom:  =?UTF-8?B?R3LDvMOfZQ==?= <a@b>\n"
                          "\nbody\n\nmore\n")
    assert notice.fields == [("Subject", "a b"), ("From", "Grüße <a@b>")]
    assert notice.body == "body\n\nmore\n"
    assert split_notice("\nonly body").fields == []
    assert split_notice("\nonly body").body == "only body"
    assert split_notice("Subject: x").body == ""


def test_our_templates_folder_is_complete() -> None:
    folder = default_templates_dir()
    assert read_charset(folder) == "utf-8"
    assert sorted(p.name for p in folder.glob("template-*.txt")) == sorted(DEFAULT_FILES.values())


def test_perl_reads_our_defaults_as_templates(tmp_path: Path) -> None:
    """Our folder is a valid l10n folder for the Perl daemon too (read_l10n_templates)."""
    if shutil.which("perl") is None or not AMAVIS_PM.exists():
        pytest.skip("amavisd-new (Perl) is not installed")
    script = ("use lib '/usr/share/perl5'; use Amavis::Util; no warnings;"
              "Amavis::Util::read_l10n_templates($ARGV[0]);"
              "print length($Amavis::Conf::notify_virus_admin_templ);")
    done = subprocess.run(["perl", "-e", script, str(default_templates_dir())],
                          capture_output=True, timeout=30)
    assert done.stdout.decode() == str(len(default_template("notify_virus_admin_templ")))


@pytest.mark.parametrize("case", ["eicar", "banned-exe-in-zip"])
def test_golden_log_line_from_amavis_builtin_log_template(case: str, tmp_path: Path) -> None:
    """The engine runs amavis's built-in $log_templ too: the golden main log line comes
    out of the same context (actions and elapsed ms taken from the line itself)."""
    from amavisd.templates import render_log_lines

    line = golden(case)["LOG LINES"].strip().split("]: ", 1)[1]
    task_id, text = line.split(" ", 1)
    actions = re.search(r"\{([^}]*)\}", text).group(1).split(",")
    ms = int(re.search(r", (\d+) ms$", text).group(1))
    ctx = replace(golden_context(case, tmp_path), actions_performed=actions,
                  elapsed=lambda: ms / 1000.0)
    assert task_id == f"({ctx.log_id})"
    assert render_log_lines(builtin_template(0), ctx) == [text]
