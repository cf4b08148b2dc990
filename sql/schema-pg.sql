-- The amavis tables for PostgreSQL, as amavisd-new 2.13's README.sql-pg defines them
-- (column names, types and meanings kept, so MailZu, modoboa-amavis and other front ends
-- work unchanged).  Lookup tables first (read by @lookup_sql_dsn), then the storage
-- tables (written by @storage_sql_dsn).
--
--   psql -d amavis -f sql/schema-pg.sql
--
-- Safe to run on a database that already has them: every statement is IF NOT EXISTS.

-- Per-user settings; NULL means 'no opinion, ask the next table'.  Y/N columns
-- are booleans, the *_level columns are spam scores.
CREATE TABLE IF NOT EXISTS policy (
  id  serial PRIMARY KEY,
  policy_name      varchar(32),
  virus_lover           char(1) default NULL,
  spam_lover            char(1) default NULL,
  unchecked_lover       char(1) default NULL,
  banned_files_lover    char(1) default NULL,
  bad_header_lover      char(1) default NULL,
  bypass_virus_checks   char(1) default NULL,
  bypass_spam_checks    char(1) default NULL,
  bypass_banned_checks  char(1) default NULL,
  bypass_header_checks  char(1) default NULL,
  virus_quarantine_to      varchar(64) default NULL,
  spam_quarantine_to       varchar(64) default NULL,
  banned_quarantine_to     varchar(64) default NULL,
  unchecked_quarantine_to  varchar(64) default NULL,
  bad_header_quarantine_to varchar(64) default NULL,
  clean_quarantine_to      varchar(64) default NULL,
  archive_quarantine_to    varchar(64) default NULL,
  spam_tag_level  real default NULL,
  spam_tag2_level real default NULL,
  spam_tag3_level real default NULL,
  spam_kill_level real default NULL,
  spam_dsn_cutoff_level        real default NULL,
  spam_quarantine_cutoff_level real default NULL,
  addr_extension_virus      varchar(64) default NULL,
  addr_extension_spam       varchar(64) default NULL,
  addr_extension_banned     varchar(64) default NULL,
  addr_extension_bad_header varchar(64) default NULL,
  warnvirusrecip      char(1)     default NULL,
  warnbannedrecip     char(1)     default NULL,
  warnbadhrecip       char(1)     default NULL,
  newvirus_admin      varchar(64) default NULL,
  virus_admin         varchar(64) default NULL,
  banned_admin        varchar(64) default NULL,
  bad_header_admin    varchar(64) default NULL,
  spam_admin          varchar(64) default NULL,
  spam_subject_tag    varchar(64) default NULL,
  spam_subject_tag2   varchar(64) default NULL,
  spam_subject_tag3   varchar(64) default NULL,
  message_size_limit  integer     default NULL,
  banned_rulenames    varchar(64) default NULL,
  disclaimer_options  varchar(64) default NULL,
  forward_method      varchar(64) default NULL,
  sa_userconf         varchar(64) default NULL,
  sa_username         varchar(64) default NULL
);

-- Recipients (and domains, '@example.com') with their policy; the highest priority
-- matching row wins.  An optional 'local' char(1) column overrides local_domains_maps.
CREATE TABLE IF NOT EXISTS users (
  id         serial  PRIMARY KEY,
  priority   integer NOT NULL DEFAULT 7,
  policy_id  integer NOT NULL DEFAULT 1 CHECK (policy_id >= 0) REFERENCES policy(id),
  email      bytea   NOT NULL UNIQUE,
  fullname   varchar(255) DEFAULT NULL
);

-- Sender addresses and domains that wblist refers to.
CREATE TABLE IF NOT EXISTS mailaddr (
  id         serial  PRIMARY KEY,
  priority   integer NOT NULL DEFAULT 9,
  email      bytea   NOT NULL UNIQUE
);

-- Per-recipient sender lists: wb is W/Y (whitelist), B/N (blacklist), a space
-- (neutral) or a number (a soft score added to the spam level).
CREATE TABLE IF NOT EXISTS wblist (
  rid        integer NOT NULL CHECK (rid >= 0) REFERENCES users(id),
  sid        integer NOT NULL CHECK (sid >= 0) REFERENCES mailaddr(id),
  wb         varchar(10) NOT NULL,
  PRIMARY KEY (rid,sid)
);

-- Every address that appears as a sender or recipient; domain holds the labels in
-- reverse order (com.example.sub) so a domain and its subdomains sort together.
CREATE TABLE IF NOT EXISTS maddr (
  id         serial      PRIMARY KEY,
  partition_tag integer  DEFAULT 0,
  email      bytea       NOT NULL,
  domain     varchar(255) NOT NULL,
  CONSTRAINT part_email UNIQUE (partition_tag,email)
);

-- One row per message.  content is NULL while the message is being processed, then
-- one letter: V B U S Y M H O T C.  quar_type: F file, Z gzip file, B bsmtp, Q sql,
-- M mailbox (smtp), L mailbox (lmtp).  dsn_sent: Y sent, N none needed, q suppressed.
CREATE TABLE IF NOT EXISTS msgs (
  partition_tag integer    DEFAULT 0,
  mail_id    bytea         NOT NULL,
  secret_id  bytea         DEFAULT '',
  am_id      varchar(20)   NOT NULL,
  time_num   integer NOT NULL CHECK (time_num >= 0),
  time_iso timestamp WITH TIME ZONE NOT NULL,
  sid        integer NOT NULL CHECK (sid >= 0),
  policy     varchar(255)  DEFAULT '',
  client_addr varchar(255) DEFAULT '',
  size       integer NOT NULL CHECK (size >= 0),
  originating char(1) DEFAULT ' ' NOT NULL,
  content    char(1),
  quar_type  char(1),
  quar_loc   varchar(255)  DEFAULT '',
  dsn_sent   char(1),
  spam_level real,
  message_id varchar(255)  DEFAULT '',
  from_addr  varchar(255)  DEFAULT '',
  subject    varchar(255)  DEFAULT '',
  host       varchar(255)  NOT NULL,
  PRIMARY KEY (partition_tag,mail_id)
);
CREATE INDEX IF NOT EXISTS msgs_idx_sid      ON msgs (sid);
CREATE INDEX IF NOT EXISTS msgs_idx_mess_id  ON msgs (message_id);
CREATE INDEX IF NOT EXISTS msgs_idx_time_iso ON msgs (time_iso);
CREATE INDEX IF NOT EXISTS msgs_idx_time_num ON msgs (time_num);

-- One row per recipient of a message: ds is the delivery status (P pass, R reject,
-- B bounce, D discard, T tempfail), rs the release status (left for front ends).
CREATE TABLE IF NOT EXISTS msgrcpt (
  partition_tag integer    DEFAULT 0,
  mail_id    bytea         NOT NULL,
  rseqnum    integer  DEFAULT 0   NOT NULL,
  rid        integer       NOT NULL,
  is_local   char(1)       DEFAULT ' ' NOT NULL,
  content    char(1)       DEFAULT ' ' NOT NULL,
  ds         char(1)       NOT NULL,
  rs         char(1)       NOT NULL,
  bl         char(1)       DEFAULT ' ',
  wl         char(1)       DEFAULT ' ',
  bspam_level real,
  smtp_resp  varchar(255)  DEFAULT '',
  PRIMARY KEY (partition_tag,mail_id,rseqnum)
);
CREATE INDEX IF NOT EXISTS msgrcpt_idx_mail_id ON msgrcpt (mail_id);
CREATE INDEX IF NOT EXISTS msgrcpt_idx_rid     ON msgrcpt (rid);

-- The sql: quarantine: the stored message in chunks numbered from 1.
CREATE TABLE IF NOT EXISTS quarantine (
  partition_tag integer    DEFAULT 0,
  mail_id    bytea         NOT NULL,
  chunk_ind  integer NOT NULL CHECK (chunk_ind >= 0),
  mail_text  bytea   NOT NULL,
  PRIMARY KEY (partition_tag,mail_id,chunk_ind)
);
