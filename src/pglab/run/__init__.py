"""Entry points and run plumbing (Hydra, Lightning). Importing it registers the config resolvers ``conf/train.yaml``
uses (``pglab.run.naming``)."""

from pglab.run.naming import register_resolvers as _register_resolvers

_register_resolvers()
