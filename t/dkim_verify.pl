#!/usr/bin/perl
# Independent DKIM verifier for the tests: Debian's Mail::DKIM (libmail-dkim-perl),
# with the key records given on the command line instead of DNS.
#   perl t/dkim_verify.pl MESSAGE-FILE 'sel._domainkey.example.com=v=DKIM1; p=...' ...
# Prints one line per signature: "d=<domain> s=<selector> a=<algorithm> => <result>"
# and a last line "result: <overall result>".  A name not given is NXDOMAIN.
use strict;
use warnings;
use Mail::DKIM::Verifier;
use Net::DNS;

my $file = shift or die "usage: $0 MESSAGE-FILE [name=record]...\n";
my %records;
for my $arg (@ARGV) {
  my ($name, $record) = split /=/, $arg, 2;
  $records{lc $name} = $record;
}

{
  no warnings 'redefine';
  *Mail::DKIM::DNS::query = sub {
    my ($name, $type) = @_;
    my $record = $records{lc $name};
    if (!defined $record) { $@ = 'NXDOMAIN'; return; }
    my @chunks = unpack('(a250)*', $record);
    return Net::DNS::RR->new(name => $name, type => 'TXT', txtdata => [@chunks]);
  };
}

open(my $fh, '<:raw', $file) or die "cannot open $file: $!\n";
my $verifier = Mail::DKIM::Verifier->new;
while (my $line = <$fh>) {
  $line =~ s/\r?\n\z/\015\012/;
  $verifier->PRINT($line);
}
close $fh;
$verifier->CLOSE;
for my $sig ($verifier->signatures) {
  printf "d=%s s=%s a=%s => %s\n", $sig->domain // '', $sig->selector // '',
         $sig->algorithm // '', $sig->result_detail // '';
}
printf "result: %s\n", $verifier->result_detail // '';
