#!/usr/bin/perl
# tests: t/config/test_lookup.py
#
# Oracle for the lookup tests: runs the installed amavisd-new lookup code on
# cases given as JSON on stdin and prints one JSON answer per case on stdout.
# Written for this project; it only calls the Amavis modules, never copies them.
#
# Input: a JSON list of cases, each one of
#   {"kind": "lookup", "get_all": 0|1, "key": "addr" | ["k1", ...],
#    "tables": [TABLE, ...], "options": {"recipient_delimiter": "+",
#    "localpart_is_case_sensitive": 0}}
#   {"kind": "keys", "key": "addr", "options": {...}}   make_query_keys(addr, 1, 1)
#   {"kind": "split", "key": "addr"}                     split_address(addr)
#   {"kind": "ip", "key": "10.1.2.3", "tables": [TABLE, ...]}   lookup_ip_acl
#   {"kind": "conf", "conf": "perl text", "var": "@x_maps", "get_all": 0|1, "key": ...,
#    "options": {...}}   lookup2 on a list a config file built (each text read once)
# TABLE (JSON -> Perl):
#   {"const": X}          the scalar X (null: undef)
#   {"sref": T}           \X for a plain X, or \$ref for a TABLE T (one level of REF)
#   {"hash": {...}}       a hash ref, values as given (null: undef)
#   {"acl": [...]}        an array ref
#   {"re": [[pattern, flags] | [pattern, flags, value], ...]}
#                         Amavis::Lookup::RE->new(qr/(?flags)pattern/ or [qr, value])
#   {"opaque": X} / {"opaque_ref": X}   Amavis::Lookup::Opaque / OpaqueRef (of \X)
#   {"label": "name"}     Amavis::Lookup::Label
# Output: a JSON list; each answer is {"result": R, "keys": K} (for get_all R and K
# are lists), {"keys": [...]}, {"split": [local, domain]}, or {"error": "..."}.
use strict;
use warnings;

BEGIN {
  # Amavis::Util warns once at load that it cannot get a tainted string (we
  # do not run under -T); nothing else may be silenced.
  $SIG{__WARN__} = sub { print STDERR @_ unless $_[0] =~ /tainted string/ };
}
use lib '/usr/share/perl5';
use JSON::PP ();
use Encode ();
use Amavis::Conf ();
use Amavis::Lookup qw(lookup2);
use Amavis::Lookup::RE ();
use Amavis::Lookup::IP qw(lookup_ip_acl);
use Amavis::Lookup::Opaque ();
use Amavis::Lookup::OpaqueRef ();
use Amavis::Lookup::Label ();
use Amavis::rfc2821_2822_Tools qw(split_address make_query_keys clear_query_keys_cache);
use File::Temp ();

$SIG{__WARN__} = 'DEFAULT';
no warnings 'uninitialized';

# Amavis works on octets: turn every decoded JSON string into UTF-8 octets.
sub octets {
  my $v = shift;
  return undef unless defined $v;
  if (ref $v eq 'ARRAY') { return [map { octets($_) } @$v] }
  if (ref $v eq 'HASH') {
    my %h; $h{Encode::encode_utf8($_)} = octets($v->{$_}) for keys %$v; return \%h;
  }
  return $v if ref $v;                          # JSON booleans
  return $v if JSON::PP->new->allow_nonref->encode($v) !~ /^"/;   # numbers stay numbers
  Encode::encode_utf8($v);
}

# And back: octets to characters for the JSON output; refs become a marker.
sub chars {
  my $v = shift;
  return undef unless defined $v;
  if (ref $v eq 'ARRAY') { return [map { chars($_) } @$v] }
  if (ref $v eq 'HASH') { my %h; $h{chars($_)} = chars($v->{$_}) for keys %$v; return \%h }
  if (ref $v eq 'Regexp') { return "$v" }
  if (ref $v) { return { __ref__ => ref $v } }
  return $v if JSON::PP->new->allow_nonref->encode($v) !~ /^"/;
  (my $text = Encode::decode_utf8($v)) =~ s/\b(ARRAY|HASH|SCALAR|REF|CODE)\(0x[0-9a-f]+\)/$1(...)/g;
  $text;   # "(opaque:ARRAY(0x55d0...))": addresses differ from run to run
}

sub table {
  my $t = shift;
  return $t->{const} if exists $t->{const};
  if (exists $t->{sref}) {
    my $inner = $t->{sref};
    my $v = ref $inner eq 'HASH' ? table($inner) : $inner;
    return \$v;
  }
  return $t->{hash} if exists $t->{hash};
  return $t->{acl} if exists $t->{acl};
  if (exists $t->{re}) {
    my @entries;
    for my $e (@{$t->{re}}) {
      my ($pattern, $flags, @value) = @$e;
      my $qr = $flags ne '' ? qr/(?$flags)$pattern/ : qr/$pattern/;
      push @entries, @value ? [$qr, $value[0]] : $qr;
    }
    return Amavis::Lookup::RE->new(@entries);
  }
  return Amavis::Lookup::Opaque->new($t->{opaque}) if exists $t->{opaque};
  if (exists $t->{opaque_ref}) { my $v = $t->{opaque_ref}; return Amavis::Lookup::OpaqueRef->new(\$v) }
  return Amavis::Lookup::Label->new($t->{label}) if exists $t->{label};
  die "oracle: unknown table description\n";
}

my %conf_read;
sub read_conf {
  my $text = shift;
  return if $conf_read{$text}++;
  my $file = File::Temp->new(SUFFIX => '.conf');
  print $file $text; close $file;
  $Amavis::Conf::i_know_what_i_am_doing{no_conf_file_writable_check} = 1;
  Amavis::Conf::include_config_files($file->filename);
}

sub set_options {
  my $o = shift || {};
  $Amavis::Conf::recipient_delimiter = $o->{recipient_delimiter};
  $Amavis::Conf::localpart_is_case_sensitive = $o->{localpart_is_case_sensitive} ? 1 : 0;
  clear_query_keys_cache();   # its cache is keyed by the address alone
}

sub answer {
  my $case = shift;
  my $kind = $case->{kind};
  set_options($case->{options});
  if ($kind eq 'keys') {
    my ($keys) = make_query_keys($case->{key}, 1, 1);
    return { keys => chars($keys) };
  }
  if ($kind eq 'split') {
    return { split => chars([split_address($case->{key})]) };
  }
  if ($kind eq 'conf') {
    read_conf($case->{conf});
    set_options($case->{options});
    no strict 'refs';
    my ($name) = $case->{var} =~ /^\@(\w+)\z/ or die "oracle: bad var\n";
    my ($result, $keys) = lookup2($case->{get_all} ? 1 : 0, $case->{key},
                                  \@{"Amavis::Conf::$name"});
    return { result => chars($result), keys => chars($keys) };
  }
  my @tables = map { table($_) } @{$case->{tables}};
  if ($kind eq 'ip') {
    my ($result, $key) = lookup_ip_acl($case->{key}, @tables);
    return { result => chars($result), keys => chars($key) };
  }
  if ($kind eq 'lookup') {
    my ($result, $keys) = lookup2($case->{get_all} ? 1 : 0, $case->{key}, \@tables);
    return { result => chars($result), keys => chars($keys) };
  }
  die "oracle: unknown case kind $kind\n";
}

my $input = do { local $/; <STDIN> };
my $cases = octets(JSON::PP->new->utf8->decode($input));
my @out;
for my $case (@$cases) {
  my $a = eval { answer($case) };
  if (!defined $a) { my $err = $@ || 'unknown error'; chomp $err; $a = { error => chars($err) } }
  push @out, $a;
}
print JSON::PP->new->utf8->canonical->encode(\@out), "\n";
