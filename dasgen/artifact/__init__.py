"""The domain artifact ``data/domains/<nnn>/``: its contract (:mod:`~dasgen.artifact.schema`), the resumable
multi-rank :class:`~dasgen.artifact.writer.DomainWriter` and its per-rank journals (:mod:`~dasgen.artifact.journal`),
the readers (:mod:`~dasgen.artifact.reader`: ``read_index``, ``iter_domain_images``, ``DomainReader``) and
:func:`~dasgen.artifact.verify.verify`, which re-hashes a domain or an export against its index or manifest.
"""
