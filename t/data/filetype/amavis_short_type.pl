#!/usr/bin/perl
# amavis_short_type.pl -- test oracle: map file(1) long descriptions to amavis short types.
#
# Part of amavisd-py's tests (t/checks/test_filetype.py).  Loads the installed
# Amavis::Conf (Debian amavisd-new, /usr/share/perl5), takes its
# $map_full_type_to_short_type_re table and applies it with Amavis::Lookup,
# as amavisd does.  Reads one long description per line on stdin and prints
# the short type(s), comma-separated, one line per input line.
use strict;
use warnings;
no warnings "once";
use lib '/usr/share/perl5';
use Exporter ();          # Amavis::Conf calls Exporter::export_tags at compile time
BEGIN { $SIG{__WARN__} = sub { warn @_ unless $_[0] =~ /tainted string/ } }
require Amavis::Conf;
require Amavis::Lookup;
require Amavis::Lookup::RE;

my $table = Amavis::Lookup::RE->new(@{$Amavis::Conf::map_full_type_to_short_type_re});
binmode(STDIN); binmode(STDOUT);
$| = 1;
while (my $line = <STDIN>) {
  chomp $line;
  my $r = Amavis::Lookup::lookup2(0, $line, [$table]);
  print defined $r ? (ref $r ? join(',', @$r) : $r) : '', "\n";
}
