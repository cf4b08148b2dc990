"""Expected SMTP/LMTP reply lines, typed by hand from spec/protocols.md section 3.

Never import these texts from ``amavisd``: a typo in the code must not be able to
pass its own test.  Texts with a variable part are functions.  Lines carry no CRLF.
"""

# 3.1 banners (socket 127.0.0.1)
S220_GREETING = "220 [127.0.0.1] ESMTP amavis service ready"
S220_GREETING_LMTP = "220 [127.0.0.1] LMTP amavis service ready"
S221_QUIT = "221 2.0.0 [127.0.0.1] amavis closing transmission channel"

# 3.2 / 3.3 commands
S500_BAD_SYNTAX = "500 5.5.2 Error: bad syntax"
S500_LINE_TOO_LONG = "500 5.5.2 Error: command line too long"
S530_STARTTLS_FIRST = "530 5.7.0 Must issue a STARTTLS command first"
S250_NOOP = "250 2.0.0 Ok NOOP"
S501_QUIT_ARGS = "501 5.5.4 Error: QUIT does not accept arguments"
S250_RSET = "250 2.0.0 Ok RSET"
S501_RSET_ARGS = "501 5.5.4 Error: RSET does not accept arguments"
S250_HELO = "250 [127.0.0.1]"
S214_HELP = ["214-2.0.0 See amavis home page at:",
             "214 2.0.0 http://www.ijs.si/software/amavisd/"]
S501_VRFY = "501 5.5.2 Syntax: VRFY address"
S252_VRFY = "252 2.0.0 Argument not checked"
S502_STARTTLS_UNAVAILABLE = "502 5.5.1 Error: command not available"
S220_STARTTLS = "220 2.0.0 Ready to start TLS"
S554_TLS_ACTIVE = "554 5.5.1 Error: TLS already active"
S501_STARTTLS_ARGS = "501 5.5.4 Error: STARTTLS does not accept arguments"
S250_XFORWARD = "250 2.5.0 Ok XFORWARD"
S500_AUTH_UNKNOWN = "500 5.5.2 Error: command AUTH not recognized"


def s502_not_implemented(verb: str) -> str:
    return f"502 5.5.1 Error: command {verb} not implemented"


def s500_not_recognized(verb: str) -> str:
    return f"500 5.5.2 Error: command {verb} not recognized"


S503_NESTED_MAIL = "503 5.5.1 Error: nested MAIL command"
S503_NEED_MAIL_RCPT = "503 5.5.1 Need MAIL command before RCPT"
S503_NEED_MAIL_DATA = "503 5.5.1 Need MAIL command before DATA"
S503_NEED_RCPT_DATA = "503 5.5.1 Need RCPT command before DATA"
S501_DATA_ARGS = "501 5.5.4 Error: DATA does not accept arguments"
S554_NO_VALID_RCPTS = "554 5.1.1 Error (DATA): no valid recipients"
S503_NO_VALID_RCPTS_LMTP = "503 5.1.1 Error (DATA): no valid recipients"
S530_AUTH_REQUIRED = "530 5.7.0 Authentication required"

# 3.4 EHLO
EHLO_DEFAULT = [
    "250-[127.0.0.1]",
    "250-VRFY",
    "250-PIPELINING",
    "250-SIZE",
    "250-ENHANCEDSTATUSCODES",
    "250-8BITMIME",
    "250-SMTPUTF8",
    "250-DSN",
    "250 XFORWARD NAME ADDR PORT PROTO HELO IDENT SOURCE",
]

# 3.5 MAIL
S501_MAIL_SYNTAX = "501 5.5.2 Syntax: MAIL FROM:<address>"
S501_MAIL_PARAMS = "501 5.5.4 Syntax error in MAIL FROM parameters"
S501_SIZE = "501 5.5.4 Syntax error in MAIL parameter: SIZE"
S501_BODY = "501 5.5.4 Syntax error in MAIL parameter: BODY"
S501_SMTPUTF8 = "501 5.5.4 Syntax error in MAIL parameter: SMTPUTF8"
S501_RET_DUP = "501 5.5.4 Syntax error in MAIL parameter: RET"


def s501_value_required(name: str) -> str:
    return f"501 5.5.4 Syntax error in MAIL parameter, value is required: {name}"


def s501_ret(value: str) -> str:
    return f"501 5.5.4 Syntax error in MAIL parameter RET: {value}"


def s504_auth_dup(token: str) -> str:
    return f"504 5.5.4 MAIL command duplicate param.: {token}"


def s504_mail_param(token: str) -> str:
    return f"504 5.5.4 MAIL command parameter error: {token}"


def s250_sender(addr: str) -> str:
    return f"250 2.1.0 Sender <{addr}> OK"


# 3.6 RCPT
S501_RCPT_SYNTAX = "501 5.5.2 Syntax: RCPT TO:<address>"
S452_TOO_MANY = "452 4.5.3 Too many recipients"
S501_NOTIFY_DUP = "501 5.5.4 Syntax error in RCPT parameter NOTIFY"
S501_NOTIFY_NO_VALUE = "501 5.5.4 Syntax error in RCPT parameter, value is required: NOTIFY"


def s501_notify_illegal(value: str) -> str:
    return f"501 5.5.4 Error in RCPT parameter NOTIFY, illegal value: {value}"


def s501_notify_combination(value: str) -> str:
    return f"501 5.5.4 Error in RCPT parameter NOTIFY, illegal combination of values: {value}"


def s501_notify_missing(value: str) -> str:
    return f"501 5.5.4 Error in RCPT parameter NOTIFY, missing value: {value}"


def s555_rcpt_param(name: str) -> str:
    return f"555 5.5.4 RCPT command parameter unrecognized: {name}"


def s250_recipient(addr: str) -> str:
    return f"250 2.1.5 Recipient <{addr}> OK"


def declared_size(code_enh: str, size: int, addr: str) -> str:
    return (f"{code_enh} Declared message size ({size} B) exceeds size limit "
            f"for recipient <{addr}>")


# 3.7 DATA
S354_DATA = "354 End data with <CR><LF>.<CR><LF>"


def s552_message_size(size: int) -> str:
    return f"552 5.3.4 Message size ({size} B) exceeds size limit"


# 3.8 final replies
def s250_ok_id(am_id: str) -> str:
    return f"250 2.5.0 Ok, id={am_id}"


def s451_processing(am_id: str, section: str, reason: str) -> str:
    return f"451 4.5.0 Error in processing, id={am_id}, {section} FAILED: {reason}"


# 3.9 timeouts and shutdown
S421_IDLE_TIMEOUT = ("421 4.3.2 Service shutting down, closing channel, "
                     "during waiting for input from client")
S421_DATA_TIMEOUT = ("421 4.3.2 Service shutting down, timed out during waiting "
                     "for input from client")
S421_SHUTDOWN_BUSY = "421 4.3.2 Service shutting down, closing channel"

# 3.11 XFORWARD and AUTH
S503_XFORWARD_IN_TXN = "503 5.5.1 Error: XFORWARD not allowed within transaction"
S501_XFORWARD_SYNTAX = "501 5.5.4 Syntax error in XFORWARD parameters"


def s501_xforward_param(token: str) -> str:
    return f"501 5.5.4 XFORWARD command parameter error: {token}"


S235_AUTH_OK = "235 2.7.0 Authentication succeeded"
S334_USERNAME = "334 VXNlcm5hbWU6"
S334_PASSWORD = "334 UGFzc3dvcmQ6"
S334_EMPTY = "334 "
S501_AUTH_ABORTED = "501 5.7.1 Authentication aborted"
S500_AUTH_TOO_LONG = "500 5.5.6 Authentication exchange line is too long"
S501_AUTH_SYNTAX = "501 5.5.2 Syntax: AUTH mech [initresp]"
S501_AUTH_MALFORMED = "501 5.5.2 Authentication failed: malformed authentication response"
S503_AUTH_TWICE = "503 5.5.1 Error: session already authenticated"
S503_AUTH_IN_TXN = "503 5.5.1 Error: AUTH not allowed within transaction"
S504_AUTH_MECH = "504 5.5.4 Error: requested authentication mechanism not supported"
