#!/usr/bin/perl
# oracle.pl -- run the installed amavisd-new's check_for_banned_names on a parts
# tree and banned tables given as JSON on stdin; print, as JSON, what it stored on
# each recipient and the log lines it wrote.  Used by t/checks/test_banned.py.
#
# Input:  {"tree": [PART...], "tables": {NAME: TABLE}, "banned_rules": {NAME: TNAME|null},
#          "recipients": [{"addr": A, "maps": [ENTRY...], "bypass": 0|1}],
#          "namepath": TNAME|null}
#   PART  = {"n": 3, "place": "1", "M": [...], "T": [...], "N": [...], "A": "UC",
#            "children": [PART...]}
#   TABLE = [[SOURCE, FLAGS, RHS?]...]  (a new_RE table; RHS omitted means 1), or
#           "debian": $banned_filename_re as read from 20-debian_defaults
#   ENTRY = a string of rule names, or a list of TNAMEs (a list of tables)
use strict;
use warnings;
BEGIN { require Exporter; }          # Amavis::Conf calls Exporter at compile time
use lib '/usr/share/perl5';
use JSON::PP ();
use Amavis::Conf ();
use Amavis::Lookup::RE ();
use Amavis::Unpackers::Part ();
use Amavis::In::Message::PerRecip ();
use Amavis::Unpackers::Validity ();

my @log;
{ no warnings qw(redefine prototype);
  *Amavis::Unpackers::Validity::ll = sub { 1 };
  *Amavis::Unpackers::Validity::do_log = sub {
    my ($level, $fmt, @args) = @_;
    push(@log, [$level, @args ? sprintf($fmt, map { defined $_ ? $_ : '' } @args) : $fmt]);
  };
}

package OracleMsg;
sub new { my ($class, %args) = @_; return bless {%args}, $class }
sub per_recip_data { return $_[0]{recips} }
sub parts_root { return $_[0]{root} }

package main;

binmode(STDIN);
my $in = JSON::PP::decode_json(do { local $/; <STDIN> });

sub debian_table {
  my $file = '/etc/amavis/conf.d/20-debian_defaults';
  open(my $fh, '<', $file) or die "$file: $!";
  my $text = do { local $/; <$fh> };
  $text =~ /^(\$banned_filename_re\s*=\s*new_RE\(.*?^\);)/ms or die "no banned_filename_re";
  my $code = "package Amavis::Conf; no strict 'vars'; my $1; \$banned_filename_re";
  $code =~ s/my \$banned_filename_re/\$banned_filename_re/;
  my $re = eval $code; die $@ if $@;
  return $re;
}

my %tables;
for my $name (keys %{ $in->{tables} }) {
  my $spec = $in->{tables}{$name};
  if (!ref $spec) { $tables{$name} = debian_table(); next }
  my @entries;
  for my $e (@$spec) {
    my ($src, $flags, @rhs) = @$e;
    my $qr = eval "qr/\$src/$flags" or die "bad regex $src: $@";
    push(@entries, @rhs ? [$qr, $rhs[0]] : $qr);
  }
  $tables{$name} = Amavis::Lookup::RE->new(@entries);
}

%Amavis::Conf::banned_rules = map {
  ($_ => defined $in->{banned_rules}{$_} ? $tables{ $in->{banned_rules}{$_} } : undef)
} keys %{ $in->{banned_rules} || {} };

my (%by_recip, @recips);
for my $r (@{ $in->{recipients} }) {
  my $obj = Amavis::In::Message::PerRecip->new;
  $obj->recip_addr($r->{addr});
  $obj->bypass_banned_checks($r->{bypass} ? 1 : 0);
  push(@recips, $obj);
  $by_recip{lc $r->{addr}} = [ map { ref $_ ? [ map { $tables{$_} } @$_ ] : $_ }
                               @{ $r->{maps} } ];
}
# a by-recipient hash whose value is the list of answers (get-all gives each entry)
my @maps;
my $n_entries = 0;
$n_entries = @$_ > $n_entries ? @$_ : $n_entries for values %by_recip;
for my $i (0 .. $n_entries - 1) {
  my %h;
  for my $addr (keys %by_recip) {
    $h{$addr} = $by_recip{$addr}[$i] if $i < @{ $by_recip{$addr} };
  }
  push(@maps, \%h);
}
$Amavis::Conf::current_policy_bank{banned_filename_maps} = \@maps;
$Amavis::Conf::current_policy_bank{banned_namepath_re} =
  defined $in->{namepath} ? $tables{ $in->{namepath} } : undef;

my $root = Amavis::Unpackers::Part->new;
sub build {
  my ($spec, $parent) = @_;
  my $p = Amavis::Unpackers::Part->new;
  $p->number($spec->{n});
  $p->parent($parent);
  my $ch = $parent->children; push(@$ch, $p); $parent->children($ch);
  $p->mime_placement($spec->{place}) if defined $spec->{place};
  $p->type_declared($spec->{M}) if $spec->{M} && @{ $spec->{M} };
  $p->type_short($spec->{T}) if $spec->{T} && @{ $spec->{T} };
  $p->name_declared($spec->{N}) if $spec->{N} && @{ $spec->{N} };
  $p->attributes($spec->{A}) if defined $spec->{A} && $spec->{A} ne '';
  build($_, $p) for @{ $spec->{children} || [] };
}
build($_, $root) for @{ $in->{tree} };

Amavis::Unpackers::Validity::check_for_banned_names(
  OracleMsg->new(recips => \@recips, root => $root));

my %out;
for my $r (@recips) {
  $out{ $r->recip_addr } = {
    map { my $v = $r->$_; ($_ => $v) }
      qw(banned_parts banned_parts_as_attr banning_rule_key banning_rule_comment
         banning_rule_rhs banning_reason_short) };
}
print JSON::PP->new->canonical->encode({ recipients => \%out, log => \@log }), "\n";
