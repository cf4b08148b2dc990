#!/usr/bin/perl
# perl_shim.pl -- evaluate Perl amavisd.conf files and print what they set, as JSON.
#
# Part of amavisd-py; run by amavisd/config/perlconf.py as
#     perl perl_shim.pl FILE...
# (argv list, never a shell string).  Written for amavisd-py; no amavisd-new code.
#
# Why a Perl program: an amavisd.conf is Perl code (interpolation, backticks,
# push, qr//, function calls), so only perl can evaluate it faithfully.  This
# program gives the files the environment amavisd gives them -- the settings
# as package variables of Amavis::Conf (so `use strict;` works), the D_* and
# CC_* constants, the helper functions -- evaluates them in order, and prints
# every variable that was assigned.  The Python side turns that into settings.
#
# Output on success (exit 0), one JSON object on stdout:
#   variables  {"$max_servers": 2, "@inet_acl": [...], "%policy_bank": {...}}
#              every variable assigned (written to, or changed in place)
#   origins    {"$max_servers": "file:line" or "file"}  where last assigned
#   referenced {"%bypass_virus_checks": {...}}  unassigned variables that an
#              assigned value refers to (see {"__var__"} below)
#   undeclared ["$my_helper"]  assigned variables amavisd does not declare
#              (possible only in files without `use strict`)
#   dkim_keys  [{"domain", "selector", "key", "options", "origin"}]
#   files      every file read, includes too, in order
#   environment  {"TMPDIR": "/var/lib/amavis/tmp"}  %ENV entries the files set
#              (null for one they deleted)
# --set NAME=VALUE gives $NAME a value before the first file, as amavisd's
# command line does for -i, -H, -T, -Q, -S and -R; it does not count as assigned.
# Values: undef is null; plain scalars, arrays and hashes as themselves;
#   qr//                      {"__regex__": pattern, "flags": "i"}
#   new_RE(...)               {"__new_re__": [[regex, value], ...]}  (value 1
#                             when the entry gave none, null for undef)
#   \&name                    {"__code__": "ask_daemon"}  (a sub outside the
#                             Amavis:: packages keeps its package; "__ANON__")
#   \@var, \%var, \$var       {"__var__": "@var"}  a reference to a named
#                             setting, kept by name (it is live in amavisd)
#   \ "x", \\ ...             {"__scalar_ref__": value}
#   Opaque(x) / OpaqueRef(r)  {"__opaque__": x} / {"__opaque_ref__": r}
#   q_sql_s('f') and friends  {"__lookup__": "q_sql_s", "args": [...]}
#   other blessed objects     {"__object__": class, "value": ...}
#   an anonymous array/hash reachable twice: the first occurrence is
#   {"__shared__": id, "value": ...}, later ones {"__ref__": id}.
# On error: one line "FILE:LINE: message" (or "FILE: message") on stderr, exit 2.

use strict;
use warnings;

package AmavisShim;

use B ();
use JSON::PP ();
use POSIX ();
use Scalar::Util ();
use re ();

our (%file_name, %origin, %touched_now, @files_read, @dkim_keys);
our $evaluating = 0;
our $depth = 0;

# Every variable amavisd-new 2.13 declares for config files, by sigil.  Only
# these may be used under `use strict;`, as in amavisd.
our (%DECLARED, %ALIASES, @PLACEHOLDERS);
BEGIN {
%DECLARED = (
  '$' => [qw(
    addr_extension_bad_header addr_extension_banned addr_extension_spam
    addr_extension_virus AF_INET6 allow_disclaimers
    allow_fixing_improper_header allow_fixing_improper_header_folding
    allow_fixing_long_header_lines allow_preserving_evidence altermime
    always_bcc amavis_auth_pass amavis_auth_user
    append_header_fields_to_bottom ar arc archive_quarantine_method
    archive_quarantine_to attachment_email_name attachment_outer_name
    attachment_password auth_reauthenticate_forwarded auth_required_inp
    auth_required_out auth_required_release bad_header_admin
    bad_header_lovers_re bad_header_quarantine_method bad_header_quarantine_to
    banned_admin banned_filename_re banned_files_lovers_re
    banned_files_quarantine_method banned_namepath_re banned_quarantine_to
    bdy_encoding blacklist_sender_re bounce_killer_score bunzip2
    bypass_banned_checks_re bypass_decode_parts bypass_header_checks_re
    bypass_spam_checks_re bypass_virus_checks_re bzip2 cabextract can_truncate
    child_timeout clean_quarantine_method clean_quarantine_to
    courierfilter_shutdown cpio daemon_chroot_dir daemon_group daemon_user
    daemonize database_sessions_persistent db_home DEBUG defang_all
    defang_bad_header defang_banned defang_spam defang_undecipherable
    defang_virus default_ldap dkim_minimum_key_bits dkim_signing_service
    do_syslog dsn_bcc dspam enable_anomy_sanitizer enable_db
    enable_dkim_signing enable_dkim_verification enable_global_cache
    enable_ip_repu enable_ldap enable_log_capture enable_log_capture_dump
    enable_zmq enforce_smtpd_message_size_limit_64kb_min file
    final_bad_header_destiny final_banned_destiny final_spam_destiny
    final_unchecked_destiny final_virus_destiny first_infected_stops_scan
    forward_method gets_addr_in_quoted_form gunzip gzip haproxy_target_enabled
    have_inet4 have_inet6 hdr_encoding hdr_encoding_qb hdrfrom_notify_admin
    hdrfrom_notify_recip hdrfrom_notify_release hdrfrom_notify_report
    hdrfrom_notify_sender hdrfrom_notify_spamadmin helpers_home
    inet_socket_bind inet_socket_port insert_received_line instance_name
    io_socket_module_name ip_repu_score_limit keep_decoded_original_re
    ldap_lookups_no_at_means_domain lha listen_queue_size
    local_client_bind_address local_domains_re localhost_name
    localpart_is_case_sensitive lock_file log_level log_recip_templ
    log_short_templ log_templ log_verbose_templ logfile logline_maxlen
    lookup_maps_imply_sql_and_ldap lzop macro_tests_sanity_limit
    mail_digest_algorithm mail_id_size_bits mail_part_digest_algorithm
    mailfrom_notify_admin mailfrom_notify_recip mailfrom_notify_sender
    mailfrom_notify_spamadmin mailfrom_to_quarantine
    map_full_type_to_short_type_re MAX_EXPANSION_FACTOR MAX_EXPANSION_QUOTA
    max_requests max_servers max_spare_servers MAXFILES MAXLEVELS
    MIN_EXPANSION_FACTOR MIN_EXPANSION_QUOTA min_servers min_spare_servers
    my_pid myauthservid mydomain MYHOME myhostname myproduct_name
    myprogram_name myversion myversion_date myversion_id myversion_id_numeric
    nanny_details_level newvirus_admin notify_autoresp_templ notify_method
    notify_release_templ notify_report_templ notify_sender_templ
    notify_spam_admin_templ notify_spam_recips_templ notify_spam_sender_templ
    notify_virus_admin_templ notify_virus_recips_templ
    notify_virus_sender_templ notify_xmailer_header originating
    os_fingerprint_dst_ip_and_port os_fingerprint_method
    outbound_disclaimers_only partition_tag path pax penpals_bonus_score
    penpals_halflife penpals_threshold_high penpals_threshold_low
    per_recip_blacklist_sender_lookup_tables
    per_recip_whitelist_sender_lookup_tables pid_file policy_bank_name
    prepend_header_fields_hdridx profiling propagate_dsn_if_possible protocol
    quarantine_subdir_levels QUARANTINEDIR recipient_delimiter
    redis_logging_key redis_logging_queue_size_limit relayhost_is_client
    release_format release_method remove_existing_spam_headers
    remove_existing_x_scanned_headers replace_existing_extension report_format
    reputation_factor requeue_method resend_method ripole rpm2cpio
    sa_auto_whitelist sa_configpath sa_crediblefrom_dsn_cutoff_level sa_debug
    sa_dsn_cutoff_level sa_kill_level_deflt sa_local_tests_only
    sa_mail_body_size_limit sa_num_instances sa_quarantine_cutoff_level
    sa_siteconfigpath sa_spam_level_char sa_spam_modifies_subj
    sa_spam_report_header sa_spam_subject_tag sa_spam_subject_tag1 sa_spawned
    sa_tag2_level_deflt sa_tag3_level_deflt sa_tag_level_deflt sa_timeout
    sa_userprefs_file smtp_connection_cache_enable
    smtp_connection_cache_on_demand smtpd_greeting_banner
    smtpd_message_size_limit smtpd_quit_banner smtpd_recipient_limit
    smtpd_timeout smtpd_tls_cert_file smtpd_tls_key_file snmp_contact
    snmp_location soft_bounce spam_admin spam_check_negative_ttl
    spam_check_positive_ttl spam_lovers_re spam_quarantine_bysender_to
    spam_quarantine_method spam_quarantine_to spamcontrol_obj
    sql_allow_8bit_address sql_lookups_no_at_means_domain
    sql_quarantine_chunksize_max sql_schema_version sql_select_policy
    sql_select_white_black_list sql_store_info_for_all_msgs storage_redis_ttl
    syslog_facility syslog_ident SYSLOG_LEVEL syslog_priority TEMPBASE
    terminate_dsn_on_notify_success timestamp_fmt_mysql tls_security_level_in
    tls_security_level_out tnef trim_trailing_space_in_lookup_result_fields
    unarj unchecked_quarantine_method unchecked_quarantine_to uncompress
    undecipherable_subject_tag unfreeze unix_socket_mode unix_socketname
    unlzop unrar unstuff virus_admin virus_check_negative_ttl
    virus_check_positive_ttl virus_lovers_re virus_quarantine_method
    virus_quarantine_to virus_scanners_failure_is_fatal
    viruses_that_fake_sender_re warn_offsite warnbadhrecip warnbadhsender
    warnbannedrecip warnbannedsender warnspamsender warnvirusrecip
    warnvirussender whitelist_sender_re X_HEADER_LINE X_HEADER_TAG zoo
  )],
  '@' => [qw(
    additional_perl_modules addr_extension_bad_header_maps
    addr_extension_banned_maps addr_extension_spam_maps
    addr_extension_virus_maps altermime_args_defang altermime_args_disclaimer
    anomy_sanitizer_args archive_quarantine_to_maps auth_mech_avail
    author_to_policy_bank_maps av_scanners av_scanners_backup
    bad_header_admin_maps bad_header_lovers_acl bad_header_lovers_maps
    bad_header_quarantine_to_maps banned_admin_maps banned_filename_maps
    banned_files_lovers_acl banned_files_lovers_maps banned_quarantine_to_maps
    blacklist_sender_acl blacklist_sender_maps bypass_banned_checks_acl
    bypass_banned_checks_maps bypass_header_checks_acl
    bypass_header_checks_maps bypass_spam_checks_acl bypass_spam_checks_maps
    bypass_virus_checks_acl bypass_virus_checks_maps clean_quarantine_to_maps
    client_ipaddr_policy daemon_groups debug_recipient_maps debug_sender_acl
    debug_sender_maps decoders disclaimer_options_bysender_maps
    dkim_signature_options_bysender_maps dkim_signing_keys_list
    dkim_signing_keys_storage forward_method_maps inet_acl ip_repu_ignore_maps
    ip_repu_ignore_networks keep_decoded_original_maps listen_sockets
    local_domains_acl local_domains_maps lookup_sql_dsn
    map_full_type_to_short_type_maps message_size_limit_maps mynetworks
    mynetworks_maps newvirus_admin_maps remove_existing_spam_headers_maps
    sa_userconf_maps sa_username_maps score_sender_maps signer_reputation_maps
    smtpd_discard_ehlo_keywords spam_admin_maps
    spam_crediblefrom_dsn_cutoff_level_bysender_maps
    spam_crediblefrom_dsn_cutoff_level_maps
    spam_dsn_cutoff_level_bysender_maps spam_dsn_cutoff_level_maps
    spam_kill_level_maps spam_lovers_acl spam_lovers_maps
    spam_modifies_subj_maps spam_notifyadmin_cutoff_level_maps
    spam_quarantine_bysender_to_maps
    spam_quarantine_cutoff_level_maps spam_quarantine_to_maps spam_scanners
    spam_subject_tag2_maps spam_subject_tag3_maps spam_subject_tag_maps
    spam_tag2_level_maps spam_tag3_level_maps spam_tag_level_maps
    storage_redis_dsn storage_sql_dsn unchecked_lovers_maps
    unchecked_quarantine_to_maps virus_admin_maps virus_lovers_acl
    virus_lovers_maps virus_name_to_policy_bank_maps
    virus_name_to_spam_score_maps virus_quarantine_to_maps
    viruses_that_fake_sender_maps warnbadhrecip_maps warnbannedrecip_maps
    warnvirusrecip_maps whitelist_sender_acl whitelist_sender_maps zmq_sockets
  )],
  '%' => [qw(
    addr_extension_maps_by_ccat addr_rewrite_maps_by_ccat admin_maps_by_ccat
    allowed_added_header_fields allowed_header_tests always_bcc_by_ccat
    bad_header_lovers banned_files_lovers banned_rules blacklist_sender
    bypass_banned_checks bypass_header_checks bypass_spam_checks
    bypass_virus_checks ccat_display_names ccat_display_names_major
    current_policy_bank defang_maps_by_ccat
    dkim_signing_keys_by_domain dsn_bcc_by_ccat
    final_destiny_maps_by_ccat forward_method_maps_by_ccat
    hdrfrom_notify_admin_by_ccat hdrfrom_notify_recip_by_ccat
    hdrfrom_notify_release_by_ccat hdrfrom_notify_report_by_ccat
    hdrfrom_notify_sender_by_ccat i_know_what_i_am_doing interface_policy
    local_delivery_aliases local_domains lovers_maps_by_ccat
    mailfrom_notify_admin_by_ccat mailfrom_notify_recip_by_ccat
    notify_admin_templ_by_ccat notify_autoresp_templ_by_ccat
    notify_recips_templ_by_ccat notify_release_templ_by_ccat
    notify_report_templ_by_ccat notify_sender_templ_by_ccat policy_bank
    prefer_our_added_header_fields quarantine_method_by_ccat
    quarantine_to_maps_by_ccat signed_header_fields smtp_reason_by_ccat
    smtp_tls_client_options smtp_tls_client_verifycn_name_maps
    smtpd_tls_server_options spam_admin spam_lovers sql_clause
    subject_tag_maps_by_ccat virus_admin virus_lovers warnrecip_maps_by_ccat
    warnsender_by_ccat whitelist_sender
  )],
);

# Old names amavisd keeps as aliases of the same variable: alias => real name.
%ALIASES = (
  '$DO_SYSLOG' => '$do_syslog', '$LOGFILE' => '$logfile',
  '$sql_partition_tag' => '$partition_tag',
  '%final_destiny_by_ccat' => '%final_destiny_maps_by_ccat',
  '%defang_by_ccat' => '%defang_maps_by_ccat',
);

# Functions that config files only take references to (scanner and decoder
# entries); the Python daemon supplies the real ones by these names.
@PLACEHOLDERS = qw(
  ask_daemon ask_av ask_clamav ask_daemon_internal run_av
  clamav_clamd_internal clamav_module_internal clamav_module_internal_pre
  clamav_module_init sophos_savi sophos_savi_internal sophos_savi_init
  sophos_sssp_internal avira_savapi_internal av_smtp_client
  do_mime_decode do_ascii do_uncompress do_gunzip do_pax_cpio do_tar do_ar
  do_unzip do_unrar do_7zip do_unarj do_arc do_zoo do_lha do_ole
  do_cabextract do_tnef_ext do_tnef do_unstuff do_executable
);
}

sub declared_names {
  my @names;
  for my $sigil ('$', '@', '%') { push @names, map { $sigil . $_ } @{$DECLARED{$sigil}} }
  @names;
}

# -- where an assignment came from ----------------------------------------

# The config file and line that caused the current call, or undef.
sub config_caller {
  for (my $i = 0; ; $i++) {
    my @frame = caller($i);
    return undef unless @frame;
    return "$file_name{$frame[1]}:$frame[2]" if exists $file_name{$frame[1]};
  }
}

sub touched {
  my ($name) = @_;
  return unless $evaluating;
  my $where = config_caller();
  return unless defined $where;
  $origin{$name} = $where;
  $touched_now{$name} = 1;
}

sub where_suffix {
  my $where = config_caller();
  return '' unless defined $where;
  my ($file, $line) = $where =~ /^(.*):(\d+)\z/s;
  " at $file line $line.";
}

# -- tied containers: they note the config line of every write --------------

package AmavisShim::Scalar;
sub TIESCALAR { my ($class, $name, $value) = @_; bless { n => $name, v => $value }, $class }
sub FETCH { $_[0]{v} }
sub STORE { AmavisShim::touched($_[0]{n}); $_[0]{v} = $_[1] }

package AmavisShim::Array;
sub TIEARRAY { my ($class, $name, @items) = @_; bless { n => $name, a => [@items] }, $class }
sub FETCH { $_[0]{a}[$_[1]] }
sub FETCHSIZE { scalar @{$_[0]{a}} }
sub EXISTS { exists $_[0]{a}[$_[1]] }
sub EXTEND { }
sub STORE { AmavisShim::touched($_[0]{n}); $_[0]{a}[$_[1]] = $_[2] }
sub STORESIZE { AmavisShim::touched($_[0]{n}); $#{$_[0]{a}} = $_[1] - 1 }
sub DELETE { AmavisShim::touched($_[0]{n}); delete $_[0]{a}[$_[1]] }
sub CLEAR { AmavisShim::touched($_[0]{n}); @{$_[0]{a}} = () }
sub PUSH { my $self = shift; AmavisShim::touched($self->{n}); push @{$self->{a}}, @_ }
sub UNSHIFT { my $self = shift; AmavisShim::touched($self->{n}); unshift @{$self->{a}}, @_ }
sub POP { AmavisShim::touched($_[0]{n}); pop @{$_[0]{a}} }
sub SHIFT { AmavisShim::touched($_[0]{n}); shift @{$_[0]{a}} }
sub SPLICE {
  my $self = shift;
  AmavisShim::touched($self->{n});
  my $items = $self->{a};
  my $offset = @_ ? shift : 0;
  $offset += @$items if $offset < 0;
  my $length = @_ ? shift : @$items - $offset;
  splice @$items, $offset, $length, @_;
}

package AmavisShim::Hash;
sub TIEHASH { my ($class, $name, %items) = @_; bless { n => $name, h => {%items} }, $class }
sub FETCH { $_[0]{h}{$_[1]} }
sub EXISTS { exists $_[0]{h}{$_[1]} }
sub FIRSTKEY { my $reset = keys %{$_[0]{h}}; each %{$_[0]{h}} }
sub NEXTKEY { each %{$_[0]{h}} }
sub SCALAR { scalar %{$_[0]{h}} }
sub STORE { AmavisShim::touched($_[0]{n}); $_[0]{h}{$_[1]} = $_[2] }
sub DELETE { AmavisShim::touched($_[0]{n}); delete $_[0]{h}{$_[1]} }
sub CLEAR { AmavisShim::touched($_[0]{n}); %{$_[0]{h}} = () }

# -- marker classes for values the Python side needs to recognise -----------

package AmavisShim::RE;        # new_RE(...): a blessed array of entries
package AmavisShim::Opaque;    # Opaque(x): a blessed ref to x
package AmavisShim::OpaqueRef; # OpaqueRef(\$x)
package AmavisShim::Lookup;    # q_sql_s('field') and friends

# -- the environment config files see ---------------------------------------

package Amavis::Conf;

BEGIN {
  # `use vars` from here marks the names as declared for `use strict;` in the
  # files, which are compiled in this package (do FILE keeps the caller's).
  require vars;
  vars->import(AmavisShim::declared_names(), keys %AmavisShim::ALIASES);
}

use constant {
  D_TEMPFAIL => -4, D_REJECT => -3, D_BOUNCE => -2, D_DISCARD => 0, D_PASS => 1,
  CC_CATCHALL => 0, CC_CLEAN => 1, CC_MTA => 2, CC_OVERSIZED => 3, CC_BADH => 4,
  CC_SPAMMY => 5, CC_SPAM => 6, CC_UNCHECKED => 7, CC_BANNED => 8, CC_VIRUS => 9,
};

BEGIN {
  no strict 'refs';
  while (my ($alias, $real) = each %AmavisShim::ALIASES) {
    my ($sigil, $name) = $alias =~ /^(.)(.*)\z/s;
    my $target = substr($real, 1);
    *{"Amavis::Conf::$name"} = $sigil eq '$' ? \${"Amavis::Conf::$target"}
                             : $sigil eq '@' ? \@{"Amavis::Conf::$target"}
                             :                 \%{"Amavis::Conf::$target"};
  }
  # Named subs (not closures), so a reference to one knows its name.
  for my $name (@AmavisShim::PLACEHOLDERS) {
    for my $pkg ('Amavis::Conf', 'Amavis::AV', 'Amavis::Unpackers') {
      eval "package $pkg; sub $name { die \"$name is provided by the daemon, "
         . "not callable from a config file\\n\" } 1" or die $@;
    }
  }
}

sub new_RE { bless [map { ref $_ eq 'ARRAY' ? [@$_] : $_ } @_], 'AmavisShim::RE' }
sub Opaque { my $value = shift; bless \$value, 'AmavisShim::Opaque' }
sub OpaqueRef { my $ref = shift; bless \$ref, 'AmavisShim::OpaqueRef' }

for my $kind (qw(q_sql_s q_sql_n q_sql_b q_ldap_s q_ldap_n q_ldap_b q_dns_a)) {
  no strict 'refs';
  *{"Amavis::Conf::$kind"} = sub { bless { kind => $kind, args => [@_] }, 'AmavisShim::Lookup' };
}

# c/cr/ca read a setting by name (amavisd reads the policy bank in force).
sub c { no strict 'refs'; my $v = ${"Amavis::Conf::$_[0]"}; $v }
sub cr { no strict 'refs'; my $v = ${"Amavis::Conf::$_[0]"}; ref $v ? $v : defined $v ? \$v : undef }
sub ca { no strict 'refs'; my $v = ${"Amavis::Conf::$_[0]"}; ref $v ? $v : defined $v ? [$v] : [] }

sub read_text {
  my ($fname, $encoding) = @_;
  open(my $fh, '<', $fname) or die "Can't open file $fname for reading: $!" . AmavisShim::where_suffix() . "\n";
  if (defined $encoding && $encoding ne '') {
    binmode($fh, ":encoding($encoding)")
      or die "Can't set :encoding($encoding) on file $fname: $!" . AmavisShim::where_suffix() . "\n";
  }
  local $/;
  my $text = <$fh>;
  close($fh);
  defined $text ? $text : '';
}

# One entry per line, '#' starts a comment (not inside "quotes").
sub _logical_lines {
  my ($fname) = @_;
  my @lines;
  for my $line (split /\n/, read_text($fname)) {
    my $kept = '';
    for my $token ($line =~ /\G ( " (?: \\. | [^"\\] )* " | [^#"]+ | . )/xgs) {
      last if $token eq '#';
      $kept .= $token;
    }
    $kept =~ s/\s+\z//;
    $kept =~ s/^\s+//;
    push @lines, $kept if $kept ne '';
  }
  @lines;
}

# read_hash([\%h,] FILE): "key [value]" lines; keys lowercased, value 1 if none.
sub read_hash {
  my $hash = ref $_[0] ? shift : {};
  my ($fname) = @_;
  for my $line (_logical_lines($fname)) {
    my ($key, $value) = split /[ \t]+/, $line, 2;
    $key = lc $key unless $localpart_is_case_sensitive;
    $hash->{$key} = defined $value && $value ne '' ? $value : 1;
  }
  $hash;
}

# read_array([\@a,] FILE): one item per line.
sub read_array {
  my $array = ref $_[0] ? shift : [];
  push @$array, _logical_lines($_[0]);
  $array;
}

# read_cidr([$ref,] FILE): Postfix cidr_table lines "net result"; a hash of net => result.
sub read_cidr {
  my $table = ref $_[0] ? shift : {};
  for my $line (_logical_lines($_[0])) {
    my ($net, $value) = split /\s+/, $line, 2;
    if (ref $table eq 'ARRAY') { push @$table, $net } else { $table->{$net} = $value }
  }
  $table;
}

# The six notification templates Debian localises, from DIR/LANG or DIR.
sub read_l10n_templates {
  my $dir = @_ > 1 ? "$_[1]/$_[0]" : $_[0];
  my $charset = read_text("$dir/charset");
  ($charset) = $charset =~ /^(?:\#[^\n]*\n)*\s*([^\s#]+)/s
    or die "Invalid charset in $dir/charset" . AmavisShim::where_suffix() . "\n";
  $notify_sender_templ       = read_text("$dir/template-dsn.txt", $charset);
  $notify_virus_sender_templ = read_text("$dir/template-virus-sender.txt", $charset);
  $notify_virus_admin_templ  = read_text("$dir/template-virus-admin.txt", $charset);
  $notify_virus_recips_templ = read_text("$dir/template-virus-recipient.txt", $charset);
  $notify_spam_sender_templ  = read_text("$dir/template-spam-sender.txt", $charset);
  $notify_spam_admin_templ   = read_text("$dir/template-spam-admin.txt", $charset);
  1;
}

sub idn_to_ascii { defined $_[0] ? lc $_[0] : undef }
sub idn_to_utf8 { $_[0] }
sub mail_idn_to_ascii { $_[0] }

# dkim_key(DOMAIN, SELECTOR, PEM_FILE, OPTIONS...): recorded, with the file checked
# as amavisd does at startup.
sub dkim_key {
  my ($domain, $selector, $key, @options) = @_;
  my $suffix = AmavisShim::where_suffix();
  @options % 2 == 0 or die "dkim_key: a list of key/value pairs expected as options$suffix\n";
  defined $domain && $domain ne '' or die "dkim_key: domain must not be empty$suffix\n";
  defined $selector && $selector ne '' or die "dkim_key: selector must not be empty$suffix\n";
  if (!ref $key) {
    open(my $fh, '<', $key) or die "Can't open PEM file $key: $!$suffix\n";
    close($fh);
  }
  for my $old (@AmavisShim::dkim_keys) {
    next if ref $domain || ref $old->{domain};
    die "dkim_key: selector $selector for domain $domain already in use$suffix\n"
      if $old->{domain} eq $domain && $old->{selector} eq $selector;
  }
  push @AmavisShim::dkim_keys, {
    domain => $domain, selector => $selector, key => $key,
    options => {@options}, origin => AmavisShim::config_caller(),
  };
  1;
}

sub read_config_file {
  my ($path, $optional) = @_;
  my $suffix = AmavisShim::where_suffix();
  if (!-e $path) {
    return 1 if $optional;
    die "Config file \"$path\" does not exist$suffix\n";
  }
  die "Config file \"$path\" is a directory$suffix\n" if -d _;
  die "Config file \"$path\" is not readable$suffix\n" unless -r _;
  die "read_config_files: recursion depth limit exceeded$suffix\n" if $AmavisShim::depth >= 100;
  # A relative name must not make `do` search @INC.
  my $do_name = $path =~ m{^\.{0,2}/} ? $path : "./$path";
  $AmavisShim::file_name{$do_name} = $path;
  push @AmavisShim::files_read, $path;
  local $AmavisShim::depth = $AmavisShim::depth + 1;
  AmavisShim::tie_undeclared($path);
  local ($1, $2, $3, $4, $5, $6, $7, $8, $9);
  local $/ = $/;
  $! = 0;
  my $result = do $do_name;
  if (!defined $result) {
    die $@ if $@ ne '';
    die "Error reading config file \"$path\": $!$suffix\n" if $! != 0;
  }
  1;
}

sub include_config_files { read_config_file($_, 0) for @_; 1 }
sub include_optional_config_files { read_config_file($_, 1) for @_; 1 }

package Amavis::Util;
no warnings 'once';
*read_text = \&Amavis::Conf::read_text;
*read_hash = \&Amavis::Conf::read_hash;
*read_array = \&Amavis::Conf::read_array;
*read_cidr = \&Amavis::Conf::read_cidr;
*read_l10n_templates = \&Amavis::Conf::read_l10n_templates;
*idn_to_ascii = \&Amavis::Conf::idn_to_ascii;

package AmavisShim;

# -- defaults: what amavisd holds before the first file, where files commonly
# interpolate it or change it in place (push, $hash{key} = ...) -------------

sub set_defaults {
  no strict 'refs';
  my %scalar = (
    myproduct_name => 'amavis', myversion_id => '2.13.0', myversion_date => '20230106',
    myversion => 'amavis-2.13.0 (20230106)', myversion_id_numeric => '2.013000',
    sql_schema_version => '2.013000', myprogram_name => 'amavisd',
    MYHOME => '/var/amavis', mydomain => '!change-mydomain-variable!.example.com',
    myhostname => (POSIX::uname())[1], instance_name => '',
    DEBUG => 0, daemonize => 1, allow_preserving_evidence => 1, courierfilter_shutdown => 0,
    max_servers => 2, max_requests => 20, child_timeout => 480, smtpd_timeout => 480,
    mail_id_size_bits => 72, nanny_details_level => 1, logline_maxlen => 980,
    log_level => 0, syslog_ident => 'amavis', syslog_facility => 'mail',
    syslog_priority => 'debug', SYSLOG_LEVEL => 'mail.debug',
    inet_socket_bind => '127.0.0.1', smtpd_recipient_limit => 1100,
    forward_method => 'smtp:[127.0.0.1]:10025', notify_method => 'smtp:[127.0.0.1]:10025',
    requeue_method => 'smtp:[127.0.0.1]:25', localhost_name => 'localhost',
    smtpd_greeting_banner => '${helo-name} ${protocol} ${product} service ready',
    smtpd_quit_banner => '${helo-name} ${product} closing transmission channel',
    propagate_dsn_if_possible => 1, terminate_dsn_on_notify_success => 0, originating => 0,
    enforce_smtpd_message_size_limit_64kb_min => 1, smtp_connection_cache_on_demand => 1,
    smtp_connection_cache_enable => 1, insert_received_line => 1,
    remove_existing_spam_headers => 1, remove_existing_x_scanned_headers => 0,
    auth_required_release => 1, report_format => 'arf', release_format => 'resend',
    hdr_encoding => 'UTF-8', bdy_encoding => 'UTF-8', hdr_encoding_qb => 'Q',
    undecipherable_subject_tag => '***UNCHECKED*** ', sa_spam_modifies_subj => 1,
    sa_num_instances => 1, sa_local_tests_only => 0, sa_timeout => 30,
    file => 'file', altermime => 'altermime', enable_ip_repu => 1,
    dkim_minimum_key_bits => 1024, bounce_killer_score => 0,
    MIN_EXPANSION_FACTOR => 5, MAX_EXPANSION_FACTOR => 500,
    final_virus_destiny => 0, final_banned_destiny => 0, final_unchecked_destiny => 1,
    final_spam_destiny => 1, final_bad_header_destiny => 1,
    virus_quarantine_method => 'local:virus-%m',
    banned_files_quarantine_method => 'local:banned-%m',
    spam_quarantine_method => 'local:spam-%m.gz',
    bad_header_quarantine_method => 'local:badh-%m',
    virus_quarantine_to => 'virus-quarantine', banned_quarantine_to => 'banned-quarantine',
    unchecked_quarantine_to => 'unchecked-quarantine', spam_quarantine_to => 'spam-quarantine',
    bad_header_quarantine_to => 'bad-header-quarantine',
    clean_quarantine_to => 'clean-quarantine', archive_quarantine_to => 'archive-quarantine',
  );
  ${"Amavis::Conf::$_"} = $scalar{$_} for keys %scalar;
  my @mynetworks = qw(127.0.0.0/8 [::1] 169.254.0.0/16 [fe80::]/10
                      10.0.0.0/8 172.16.0.0/12 192.168.0.0/16 [fc00::]/7);
  @Amavis::Conf::mynetworks = @mynetworks;
  @Amavis::Conf::inet_acl = qw(127.0.0.1 [::1]);
  @Amavis::Conf::mynetworks_maps = (\@Amavis::Conf::mynetworks);
  @Amavis::Conf::client_ipaddr_policy = map { ($_, 'MYNETS') } @Amavis::Conf::mynetworks_maps;
  @Amavis::Conf::altermime_args_defang = qw(--verbose --removeall);
  @Amavis::Conf::altermime_args_disclaimer = qw(--disclaimer=/etc/altermime-disclaimer.txt);
  %Amavis::Conf::allowed_added_header_fields = map { ($_ => 1) } qw(
    authentication-results dkim-signature received vbr-info x-amavis-alert
    x-amavis-hold x-amavis-modified x-amavis-os-fingerprint x-amavis-penpals
    x-amavis-policybank x-bogosity x-crm114-action x-crm114-cacheid x-crm114-notice
    x-crm114-status x-dspam-class x-dspam-confidence x-dspam-factors
    x-dspam-probability x-dspam-processed x-dspam-result x-dspam-signature
    x-dspam-user x-quarantine-id x-spam-flag x-spam-level x-spam-score
    x-spam-status x-spam-tests);
  $Amavis::Conf::allowed_added_header_fields{$_} = 0
    for qw(x-amavis-category x-spam-checker-version x-spam-report);
  %Amavis::Conf::smtpd_tls_server_options = (SSL_verifycn_scheme => 'smtp', SSL_session_cache => 2);
  %Amavis::Conf::smtp_tls_client_options = (SSL_verifycn_scheme => 'smtp');
  # Lookup lists that start out referring to the legacy variables.
  for my $what (qw(local_domains bypass_virus_checks bypass_spam_checks
                   bypass_banned_checks bypass_header_checks virus_lovers spam_lovers
                   banned_files_lovers bad_header_lovers whitelist_sender blacklist_sender)) {
    @{"Amavis::Conf::${what}_maps"} =
      (\%{"Amavis::Conf::$what"}, \@{"Amavis::Conf::${what}_acl"}, \${"Amavis::Conf::${what}_re"});
  }
  my %by_scalar = (
    newvirus_admin_maps => 'newvirus_admin', bad_header_admin_maps => 'bad_header_admin',
    spam_quarantine_bysender_to_maps => 'spam_quarantine_bysender_to',
    spam_tag_level_maps => 'sa_tag_level_deflt', spam_tag2_level_maps => 'sa_tag2_level_deflt',
    spam_tag3_level_maps => 'sa_tag3_level_deflt', spam_kill_level_maps => 'sa_kill_level_deflt',
    spam_dsn_cutoff_level_maps => 'sa_dsn_cutoff_level',
    spam_dsn_cutoff_level_bysender_maps => 'sa_dsn_cutoff_level',
    spam_crediblefrom_dsn_cutoff_level_maps => 'sa_crediblefrom_dsn_cutoff_level',
    spam_crediblefrom_dsn_cutoff_level_bysender_maps => 'sa_crediblefrom_dsn_cutoff_level',
    spam_quarantine_cutoff_level_maps => 'sa_quarantine_cutoff_level',
    spam_subject_tag_maps => 'sa_spam_subject_tag1', spam_subject_tag2_maps => 'sa_spam_subject_tag',
    remove_existing_spam_headers_maps => 'remove_existing_spam_headers',
    keep_decoded_original_maps => 'keep_decoded_original_re',
    virus_quarantine_to_maps => 'virus_quarantine_to',
    banned_quarantine_to_maps => 'banned_quarantine_to',
    unchecked_quarantine_to_maps => 'unchecked_quarantine_to',
    spam_quarantine_to_maps => 'spam_quarantine_to',
    bad_header_quarantine_to_maps => 'bad_header_quarantine_to',
    clean_quarantine_to_maps => 'clean_quarantine_to',
    archive_quarantine_to_maps => 'archive_quarantine_to',
    warnvirusrecip_maps => 'warnvirusrecip', warnbannedrecip_maps => 'warnbannedrecip',
    warnbadhrecip_maps => 'warnbadhrecip',
    addr_extension_virus_maps => 'addr_extension_virus',
    addr_extension_spam_maps => 'addr_extension_spam',
    addr_extension_banned_maps => 'addr_extension_banned',
    addr_extension_bad_header_maps => 'addr_extension_bad_header',
  );
  @{"Amavis::Conf::$_"} = (\${"Amavis::Conf::$by_scalar{$_}"}) for keys %by_scalar;
  @Amavis::Conf::virus_admin_maps = (\%Amavis::Conf::virus_admin, \$Amavis::Conf::virus_admin);
  @Amavis::Conf::spam_admin_maps = (\%Amavis::Conf::spam_admin, \$Amavis::Conf::spam_admin);
  @Amavis::Conf::banned_admin_maps =
    (\$Amavis::Conf::banned_admin, \%Amavis::Conf::virus_admin, \$Amavis::Conf::virus_admin);
  @Amavis::Conf::viruses_that_fake_sender_maps = (\$Amavis::Conf::viruses_that_fake_sender_re, 1);
  @Amavis::Conf::debug_sender_maps = (\@Amavis::Conf::debug_sender_acl);
  @Amavis::Conf::ip_repu_ignore_maps = (\@Amavis::Conf::ip_repu_ignore_networks);
  @Amavis::Conf::banned_filename_maps = ('DEFAULT');
}

# Tie every declared variable (after the defaults are in), so each write notes
# its config line.  Aliases share the container, so they are covered too.
sub tie_all {
  no strict 'refs';
  for my $var (declared_names()) {
    my ($sigil, $name) = $var =~ /^(.)(.*)\z/s;
    my $glob = "Amavis::Conf::$name";
    if ($sigil eq '$') {
      my $value = ${$glob};
      tie ${$glob}, 'AmavisShim::Scalar', $var, $value;
    } elsif ($sigil eq '@') {
      my @items = @{$glob};
      tie @{$glob}, 'AmavisShim::Array', $var, @items;
    } else {
      my %items = %{$glob};
      tie %{$glob}, 'AmavisShim::Hash', $var, %items;
    }
  }
}

# A file without `use strict;` may make variables amavisd does not declare (a
# misspelling, or a helper).  Tie the names its text mentions before it is
# compiled, so their writes note a line too.
our %SPECIAL = map { ($_ => 1) } qw(ENV INC ARGV ARGVOUT STDIN STDOUT STDERR SIG _ a b);
our %tied_extra;
sub tie_undeclared {
  my ($path) = @_;
  open(my $fh, '<', $path) or return;
  local $/;
  my $text = <$fh>;
  close($fh);
  return if $text =~ /^\s*use\s+strict\s*;/m;   # strict: such names are errors anyway
  my %declared = map { ($_ => 1) } declared_names(), keys %ALIASES;
  no strict 'refs';
  while ($text =~ /([\$\@%])\{?([A-Za-z_]\w*)\}?\s*([\[{]?)/g) {
    my ($sigil, $name, $subscript) = ($1, $2, $3);
    next if $SPECIAL{$name} || $name =~ /::/;
    $sigil = $subscript eq '[' ? '@' : '%' if $sigil ne '%' && $subscript ne '';
    my $var = "$sigil$name";
    next if $declared{$var} || $tied_extra{$var}++;
    my $glob = "Amavis::Conf::$name";
    if ($sigil eq '$') { tie ${$glob}, 'AmavisShim::Scalar', $var, ${$glob} }
    elsif ($sigil eq '@') { my @items = @{$glob}; tie @{$glob}, 'AmavisShim::Array', $var, @items }
    else { my %items = %{$glob}; tie %{$glob}, 'AmavisShim::Hash', $var, %items }
  }
}

# -- finding the variables ----------------------------------------------------

# Every variable in package Amavis::Conf: declared ones, and any a file made
# without `use strict;`.  Alias names are left out (their real name is listed).
sub all_variables {
  no strict 'refs';
  my %names = map { ($_ => 1) } declared_names();
  for my $name (keys %Amavis::Conf::) {
    next if $name =~ /::\z/ || $name !~ /^[A-Za-z_]\w*\z/ || $name =~ /^(?:BEGIN|ISA|EXPORT.*|VERSION|AUTOLOAD|DESTROY|a|b)\z/;
    my $glob = \$Amavis::Conf::{$name};
    next unless ref $glob eq 'GLOB';
    $names{"\$$name"} = 1 if defined ${*{$glob}{SCALAR}};
    $names{"\@$name"} = 1 if *{$glob}{ARRAY} && @{*{$glob}{ARRAY}};
    $names{"%$name"} = 1 if *{$glob}{HASH} && %{*{$glob}{HASH}};
  }
  delete $names{$_} for keys %ALIASES;
  sort keys %names;
}

sub var_ref {
  my ($var) = @_;
  no strict 'refs';
  my ($sigil, $name) = $var =~ /^(.)(.*)\z/s;
  $sigil eq '$' ? \${"Amavis::Conf::$name"}
    : $sigil eq '@' ? \@{"Amavis::Conf::$name"} : \%{"Amavis::Conf::$name"};
}

# -- serialising --------------------------------------------------------------

sub code_name {
  my ($code) = @_;
  my $cv = B::svref_2object($code);
  my $gv = $cv->GV;
  return '__ANON__' if !$gv || ref $gv eq 'B::SPECIAL';
  my $name = $gv->NAME;
  my $pkg = $gv->STASH->NAME;
  return $name if $name eq '__ANON__' || $pkg =~ /^Amavis(?:::|\z)/;
  "${pkg}::$name";
}

# Text for JSON: a byte string that is valid UTF-8 is taken as UTF-8 (config
# files are read as bytes); numbers stay numbers.
sub plain {
  my ($v) = @_;
  return $v if ref $v || utf8::is_utf8($v);
  my $copy = "$v";
  return $v if $copy !~ /[\x80-\xff]/;
  utf8::decode($copy);
  $copy;
}

sub new_state {
  my %named;
  for my $var (all_variables(), keys %ALIASES) {
    $named{Scalar::Util::refaddr(var_ref($var))} ||= $ALIASES{$var} || $var;
  }
  { named => \%named, count => {}, emitted => {}, next_id => 0, used_vars => {} };
}

# First pass: count how often each anonymous container is reached.
sub count_refs {
  my ($v, $st) = @_;
  return unless ref $v;
  return if re::is_regexp($v) || Scalar::Util::reftype($v) eq 'CODE';
  my $addr = Scalar::Util::refaddr($v);
  return if exists $st->{named}{$addr};
  return if $st->{count}{$addr}++;
  my $type = Scalar::Util::reftype($v);
  if ($type eq 'ARRAY') { count_refs($_, $st) for @$v }
  elsif ($type eq 'HASH') { count_refs($_, $st) for values %$v }
  elsif ($type eq 'SCALAR' || $type eq 'REF') { count_refs($$v, $st) }
}

sub dump_value {
  my ($v, $st) = @_;
  return undef unless defined $v;
  return plain($v) unless ref $v;
  if (re::is_regexp($v)) {
    my ($pattern, $flags) = re::regexp_pattern($v);
    return { __regex__ => plain($pattern), flags => $flags };
  }
  my $type = Scalar::Util::reftype($v);
  return { __code__ => code_name($v) } if $type eq 'CODE';
  my $addr = Scalar::Util::refaddr($v);
  if (exists $st->{named}{$addr}) {
    my $name = $st->{named}{$addr};
    $st->{used_vars}{$name} = 1;
    return { __var__ => $name };
  }
  if (($st->{count}{$addr} || 0) > 1) {
    return { __ref__ => $st->{emitted}{$addr} } if exists $st->{emitted}{$addr};
    my $id = ++$st->{next_id};
    $st->{emitted}{$addr} = $id;
    return { __shared__ => $id, value => dump_inner($v, $type, $st) };
  }
  dump_inner($v, $type, $st);
}

sub dump_inner {
  my ($v, $type, $st) = @_;
  my $class = Scalar::Util::blessed($v);
  if (defined $class) {
    if ($class eq 'AmavisShim::RE') {
      my @entries = map {
        ref $_ eq 'ARRAY'
          ? [dump_value($_->[0], $st), @$_ < 2 ? 1 : dump_value($_->[1], $st)]
          : [dump_value($_, $st), 1]
      } @$v;
      return { __new_re__ => \@entries };
    }
    return { __opaque__ => dump_value($$v, $st) } if $class eq 'AmavisShim::Opaque';
    return { __opaque_ref__ => dump_value($$v, $st) } if $class eq 'AmavisShim::OpaqueRef';
    if ($class eq 'AmavisShim::Lookup') {
      return { __lookup__ => $v->{kind}, args => [map { dump_value($_, $st) } @{$v->{args}}] };
    }
    return { __object__ => $class, value => dump_plain($v, $type, $st) };
  }
  dump_plain($v, $type, $st);
}

sub dump_plain {
  my ($v, $type, $st) = @_;
  return [map { dump_value($_, $st) } @$v] if $type eq 'ARRAY';
  if ($type eq 'HASH') {
    my %out;
    $out{plain($_)} = dump_value($v->{$_}, $st) for keys %$v;
    return \%out;
  }
  return { __scalar_ref__ => dump_value($$v, $st) } if $type eq 'SCALAR' || $type eq 'REF';
  { __unsupported__ => $type };
}

sub count_var {
  my ($var, $st) = @_;
  my $ref = var_ref($var);
  my $sigil = substr($var, 0, 1);
  if ($sigil eq '$') { count_refs($$ref, $st) }
  elsif ($sigil eq '@') { count_refs($_, $st) for @$ref }
  else { count_refs($_, $st) for values %$ref }
}

# A variable's content (the container itself, not a reference to it).
sub dump_var {
  my ($var, $st) = @_;
  my $ref = var_ref($var);
  my $sigil = substr($var, 0, 1);
  return dump_value($$ref, $st) if $sigil eq '$';
  dump_plain($ref, $sigil eq '@' ? 'ARRAY' : 'HASH', $st);
}

# A comparable text of every variable, to see which ones a file changed.
sub snapshot {
  my %snap;
  my $json = JSON::PP->new->canonical(1)->allow_nonref(1);
  my $st = new_state();
  for my $var (all_variables()) {
    @$st{qw(count emitted)} = ({}, {});
    count_var($var, $st);
    $snap{$var} = $json->encode(stringify(dump_var($var, $st)));
  }
  \%snap;
}

sub stringify {
  my ($v) = @_;
  return [map { stringify($_) } @$v] if ref $v eq 'ARRAY';
  return { map { ($_ => stringify($v->{$_})) } keys %$v } if ref $v eq 'HASH';
  defined $v ? "$v" : undef;
}

# -- errors ---------------------------------------------------------------------

# "FILE:LINE: message" from a Perl error text, finding the config file it names
# (the earliest mention wins: for an error in an included file, that file).
sub error_line {
  my ($err, $top) = @_;
  $err =~ s/\s+\z//;
  my %forms = (%file_name, map { ($_ => $_) } values %file_name);
  my ($best_pos, $form);
  for my $candidate (keys %forms) {
    my $pos = index($err, " at $candidate line ");
    next if $pos < 0;
    next if defined $best_pos && ($pos > $best_pos
                                  || ($pos == $best_pos && length $candidate < length $form));
    ($best_pos, $form) = ($pos, $candidate);
  }
  my ($first) = split /\n/, $err;
  if (!defined $form) { $first =~ s/\.\z//; return "$top: $first" }
  my ($line) = substr($err, $best_pos) =~ /^ at \Q$form\E line (\d+)/;
  my $near = substr($err, $best_pos) =~ /^ at \Q$form\E line \d+, near ("[^\n]*)/ ? $1 : '';
  my $message = $first;
  $message =~ s/ at \Q$form\E line \d+.*\z//s;
  $message =~ s/\.\z//;
  $message .= " near $near" if $near ne '';
  "$forms{$form}:$line: $message";
}

# -- main ---------------------------------------------------------------------

sub main {
  my @args = @ARGV;
  my %preset;
  while (@args && $args[0] =~ /^--/) {
    my $option = shift @args;
    last if $option eq '--';
    my ($name, $value) = $option eq '--set' && @args ? split(/=/, shift(@args), 2) : ();
    if (!defined $value || !grep { $_ eq $name } @{$DECLARED{'$'}}) {
      print STDERR "perl_shim.pl: bad option $option\n";
      exit 64;
    }
    $preset{$name} = $value;
  }
  my @files = @args;
  if (!@files) { print STDERR "usage: perl_shim.pl [--set NAME=VALUE]... [--] FILE...\n"; exit 64 }
  set_defaults();
  { no strict 'refs'; ${"Amavis::Conf::$_"} = $preset{$_} for keys %preset; }
  tie_all();
  my %env_before = %ENV;
  my $initial = snapshot();
  my $previous = $initial;
  for my $file (@files) {
    %touched_now = ();
    $evaluating = 1;
    my $ok = eval { package Amavis::Conf; include_config_files($file); 1 };
    $evaluating = 0;
    if (!$ok) {
      print STDERR error_line($@ || 'unknown error', $file), "\n";
      exit 2;
    }
    my $now = snapshot();
    for my $var (keys %$now) {
      my $before = $previous->{$var};
      next if defined $before && $before eq $now->{$var};
      $origin{$var} = $file unless $touched_now{$var};
    }
    $previous = $now;
  }
  my %assigned;
  for my $var (all_variables()) {
    my $was = $initial->{$var};
    $assigned{$var} = 1 if exists $origin{$var}
      || !defined $was || $was ne $previous->{$var};
  }
  my $st = new_state();
  count_var($_, $st) for sort keys %assigned;
  my (%variables, %referenced);
  $variables{$_} = dump_var($_, $st) for sort keys %assigned;
  my %declared = map { ($_ => 1) } declared_names();
  # Unassigned variables that assigned values refer to, until none is new.
  while (my @todo = grep { !exists $variables{$_} && !exists $referenced{$_} }
                    keys %{$st->{used_vars}}) {
    $referenced{$_} = dump_var($_, $st) for @todo;
  }
  my $out = {
    variables => \%variables,
    origins => { map { ($_ => $origin{$_}) } grep { exists $origin{$_} } keys %assigned },
    referenced => \%referenced,
    undeclared => [sort grep { !$declared{$_} } keys %assigned],
    dkim_keys => [map { { %$_, options => dump_value($_->{options}, $st),
                          key => dump_value($_->{key}, $st),
                          domain => dump_value($_->{domain}, $st) } } @dkim_keys],
    files => \@files_read,
    environment => { map { ($_ => $ENV{$_}) }
                     grep { !exists $env_before{$_} || !defined $ENV{$_}
                            || $ENV{$_} ne $env_before{$_} } keys %ENV },
  };
  $out->{environment}{$_} = undef for grep { !exists $ENV{$_} } keys %env_before;
  print JSON::PP->new->utf8(1)->canonical(1)->allow_nonref(1)->encode($out), "\n";
  exit 0;
}

main();
