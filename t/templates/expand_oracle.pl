#!/usr/bin/perl
# The reference for t/templates/test_engine.py: amavisd-new's own macro processor
# (Amavis::Expand) and wrap_string, fed JSON requests one per line on stdin:
#   ["expand", TEMPLATE, {NAME: string | [strings] | null}]
#   ["wrap", WIDTH, PREFIX, INDENT, TEXT, STRUCTURED]
#   ["sprintf", FORMAT, ARG...]   ["substr", S, POS(, LEN)]   ["incr"|"decr", V, ARG...]
# and answering one JSON array [result] per line.  Nothing here is used by the daemon.
use strict;
use warnings;
no warnings qw(uninitialized numeric);
use lib '/usr/share/perl5';
use JSON::PP;
use Amavis::Expand qw(expand);
use Amavis::rfc2821_2822_Tools qw(wrap_string);

my $json = JSON::PP->new->utf8->canonical->allow_nonref;
$| = 1;
while (my $line = <STDIN>) {
  my ($op, @a) = @{ $json->decode($line) };
  my $out;
  if ($op eq 'expand') {
    my ($template, $macros) = @a;
    my %builtins = %$macros;
    $out = ${ expand(\$template, \%builtins) };
  } elsif ($op eq 'wrap') {
    $out = wrap_string($a[3], $a[0], $a[1], $a[2], $a[4]);
  } elsif ($op eq 'sprintf') {
    my $fmt = shift @a;
    $out = eval { sprintf($fmt, @a) };
  } elsif ($op eq 'substr') {
    $out = @a > 2 ? substr($a[0], $a[1], $a[2]) : substr($a[0], $a[1]);
  } elsif ($op eq 'incr') {
    my ($v, @rest) = @a;
    if (!@rest) { $v++ } else { $v += $_ for @rest }
    $out = "$v";
  } elsif ($op eq 'decr') {
    my ($v, @rest) = @a;
    if (!@rest) { $v-- } else { $v -= $_ for @rest }
    $out = "$v";
  }
  print $json->encode([$out]), "\n";
}
