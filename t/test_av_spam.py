# tests: amavisd/content.py (apply_av_spam, pipeline.md section 9.5)
"""A virus name that is really spam raises the recipients' spam levels."""

from amavisd.checks.spam import RecipientSpam, SpamResult
from amavisd.checks.virus import AvSpam, VirusResult
from amavisd.content import apply_av_spam


def test_av_spam_score_raises_levels_and_adds_tests():
    result = SpamResult(code_loaded=True, performed=True, recipients={
        "bob@x": RecipientSpam("bob@x", level=1.5, tests=["GTUBE_X=1.5"]),
        "eve@x": RecipientSpam("eve@x", bypassed=True, level=None),
        "amy@x": RecipientSpam("amy@x", level=None)})
    virus = VirusResult(status=False, av_spam=[AvSpam("ClamAV", ["Sanesecurity.Junk.1",
                                                                 "Sanesecurity.Spam.2"],
                                                      [0.1, 4.0])])
    apply_av_spam(result, virus)
    assert result.recipients["bob@x"].level == 5.5
    assert result.recipients["bob@x"].tests == [
        "GTUBE_X=1.5", "AV:Sanesecurity.Junk.1=0.1,AV:Sanesecurity.Spam.2=4.0"]
    assert result.recipients["amy@x"].level == 4.0
    assert result.recipients["eve@x"].level is None


def test_no_av_spam_changes_nothing():
    result = SpamResult(code_loaded=True, recipients={"bob@x": RecipientSpam("bob@x", level=2)})
    apply_av_spam(result, VirusResult(status=True, virus_names=["Eicar"]))
    apply_av_spam(None, VirusResult(av_spam=[AvSpam("C", ["S"], [1.0])]))
    assert result.recipients["bob@x"].level == 2
