#!/usr/bin/perl
# oracle.pl -- run the installed amavisd-new's check_header_validity on a header
# block read from stdin and print its findings as JSON: {"minor": N, "bad": [...]}.
#
#   perl oracle.pl [SMTPUTF8 [TESTS_JSON]]
#
# SMTPUTF8 is 0 or 1 (default 0); TESTS_JSON overrides %allowed_header_tests
# (default: every test on except utf8, as Amavis::Conf sets it).  Used by
# t/checks/test_badheader.py as an oracle; it needs /usr/share/perl5/Amavis.
use strict;
use warnings;
BEGIN { require Exporter; }          # Amavis::Conf calls Exporter at compile time
use lib '/usr/share/perl5';
use JSON::PP ();
use Amavis::Conf ();
use Amavis::Unpackers::Validity qw(check_header_validity);

# The two accessors check_header_validity asks the message object for.
package OracleMsg;
sub new { my ($class, %args) = @_; return bless {%args}, $class }
sub orig_header { return $_[0]{fields} }
sub smtputf8 { return $_[0]{smtputf8} }

package main;

my $smtputf8 = @ARGV ? shift(@ARGV) : 0;
my %tests = map { ($_ => 1) } qw(other mime syntax empty long control 8bit missing multiple);
$tests{utf8} = 0;
%tests = %{ JSON::PP::decode_json(shift(@ARGV)) } if @ARGV;
$Amavis::Conf::current_policy_bank{allowed_header_tests} = \%tests;

binmode(STDIN);
my $block = do { local $/; <STDIN> };
$block = '' if !defined $block;

# Header fields the way amavis's reader builds them: LF-terminated lines, a line
# starting with SP/TAB continues the previous field, an empty line ends the header.
my @fields;
for my $line (split(/(?<=\n)/, $block)) {
  last if $line eq "\n";
  if ($line =~ /^[ \t]/ && @fields) { $fields[-1] .= $line }
  else { push(@fields, $line) }
}

my ($bad, $minor) = check_header_validity(OracleMsg->new(fields => \@fields,
                                                         smtputf8 => $smtputf8));
print JSON::PP->new->canonical->ascii->encode({ minor => $minor, bad => $bad }), "\n";
