"""MIME handling of the message on disk: the streaming splitter (``walk``).

spec/pipeline.md section 6.1.  DESIGN.md "Memory": the stdlib ``email`` package
parses header blocks only; bodies are split and decoded to files by ``walk``.
"""
