#!/usr/bin/perl
# Test oracle for t/config/test_perlconf.py: what the real amavisd-new sees.
#
#     perl oracle.pl NAME,NAME,... FILE...
#
# Loads the installed Amavis::Conf (Debian's amavisd-new, /usr/share/perl5),
# reads FILE... with its own include_config_files, and prints, as JSON, the
# value of each requested variable (NAME with its sigil: '$max_servers') and
# which of them the files changed.  Written for amavisd-py; it only calls the
# installed module, nothing of it is copied.
use strict;
use warnings;
use Exporter ();    # Amavis::Conf's BEGIN block expects Exporter loaded
use B ();
use JSON::PP ();
use Scalar::Util ();
use re ();

BEGIN { $SIG{__WARN__} = sub { } }   # Amavis::Util warns about taint mode
use lib '/usr/share/perl5';
require Amavis::Conf;
require Amavis::Util;

my ($names, @files) = @ARGV;
my @names = split /,/, $names;

sub var_ref {
  my ($var) = @_;
  no strict 'refs';
  my ($sigil, $name) = $var =~ /^(.)(.*)\z/s;
  $sigil eq '$' ? \${"Amavis::Conf::$name"}
    : $sigil eq '@' ? \@{"Amavis::Conf::$name"} : \%{"Amavis::Conf::$name"};
}

sub value {
  my ($v, $seen) = @_;
  return $v unless ref $v;
  if (re::is_regexp($v)) {
    my ($pattern, $flags) = re::regexp_pattern($v);
    return { __regex__ => $pattern, flags => $flags };
  }
  my $type = Scalar::Util::reftype($v);
  if ($type eq 'CODE') {
    my $gv = B::svref_2object($v)->GV;
    return { __code__ => $gv->NAME };
  }
  my $addr = Scalar::Util::refaddr($v);
  return { __seen__ => 1 } if $seen->{$addr}++;
  if (Scalar::Util::blessed($v) && Scalar::Util::blessed($v) eq 'Amavis::Lookup::RE') {
    return { __new_re__ => [map { ref $_ eq 'ARRAY'
                                  ? [value($_->[0], $seen), @$_ < 2 ? 1 : value($_->[1], $seen)]
                                  : [value($_, $seen), 1] } @$v] };
  }
  return [map { value($_, $seen) } @$v] if $type eq 'ARRAY';
  return { map { ($_ => value($v->{$_}, $seen)) } keys %$v } if $type eq 'HASH';
  return { __scalar_ref__ => value($$v, $seen) };
}

sub var_value {
  my ($var) = @_;
  my $ref = var_ref($var);
  my $sigil = substr($var, 0, 1);
  my $v = $sigil eq '$' ? value($$ref, {}) : value($ref, {});
  delete $v->{''} if $var eq '%policy_bank';   # the built-in base bank
  $v;
}

my $json = JSON::PP->new->canonical(1)->allow_nonref(1);
my %before = map { ($_ => $json->encode(var_value($_))) } @names;
$Amavis::Conf::i_know_what_i_am_doing{no_conf_file_writable_check} = 1;
Amavis::Conf::include_config_files(@files);
my %values = map { ($_ => var_value($_)) } @names;
my @changed = grep { $json->encode($values{$_}) ne $before{$_} } @names;
print JSON::PP->new->utf8(1)->canonical(1)->encode({ values => \%values, changed => \@changed }), "\n";
