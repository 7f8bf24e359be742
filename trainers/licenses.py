"""The licence ids a model card may state: the hub's own list, and the licences of the base models whose
terms tokensmith knows (trainers/card.py states one for an embedding trained on them). Light: the config
checks `--hub-license` with it before a run starts."""

from __future__ import annotations

from embeddings.errors import TokensmithError

# The base models whose own licence the card of an embedding trained on them states (the hub's licence id
# each repo's card gives). Any other base (a fine-tune, sdxl-turbo under Stability's non-commercial terms, a
# local checkpoint) has terms tokensmith cannot know: the card states none unless --license gives one.
BASE_LICENSES = {
    **{f"compvis/stable-diffusion-v1-{v}": "creativeml-openrail-m" for v in (1, 2, 3, 4)},
    "runwayml/stable-diffusion-v1-5": "creativeml-openrail-m",
    "stable-diffusion-v1-5/stable-diffusion-v1-5": "creativeml-openrail-m",
    "stabilityai/stable-diffusion-2": "openrail++",
    "stabilityai/stable-diffusion-2-base": "openrail++",
    "stabilityai/stable-diffusion-2-1": "openrail++",
    "stabilityai/stable-diffusion-2-1-base": "openrail++",
    "stabilityai/stable-diffusion-xl-base-1.0": "openrail++",
}
# The licence ids the hub accepts in a card (https://huggingface.co/docs/hub/repositories-licenses); it
# refuses any other with "Invalid metadata", so an unknown id is refused here, before a run or a repo exists.
_HUB_LICENSE_LIST = """
    apache-2.0 mit openrail bigscience-openrail-m creativeml-openrail-m bigscience-bloom-rail-1.0
    bigcode-openrail-m afl-3.0 artistic-2.0 bsl-1.0 bsd bsd-2-clause bsd-3-clause bsd-3-clause-clear c-uda cc
    cc0-1.0 cc-by-2.0 cc-by-2.5 cc-by-3.0 cc-by-4.0 cc-by-sa-3.0 cc-by-sa-4.0 cc-by-nc-2.0 cc-by-nc-3.0
    cc-by-nc-4.0 cc-by-nd-4.0 cc-by-nc-nd-3.0 cc-by-nc-nd-4.0 cc-by-nc-sa-2.0 cc-by-nc-sa-3.0 cc-by-nc-sa-4.0
    cdla-sharing-1.0 cdla-permissive-1.0 cdla-permissive-2.0 wtfpl ecl-2.0 epl-1.0 epl-2.0 etalab-2.0
    eupl-1.1 eupl-1.2 agpl-3.0 gfdl gpl gpl-2.0 gpl-3.0 lgpl lgpl-2.1 lgpl-3.0 isc h-research intel-research
    lppl-1.3c ms-pl apple-ascl apple-amlr mpl-2.0 odc-by odbl openmdw-1.0 openmdw-1.1 openrail++ osl-3.0
    postgresql ofl-1.1 ncsa unlicense zlib pddl lgpl-lr deepfloyd-if-license
    fair-noncommercial-research-license llama2 llama3 llama3.1 llama3.2 llama3.3 llama4 grok2-community gemma
    unknown other"""
HUB_LICENSES = frozenset(_HUB_LICENSE_LIST.split())
LICENSES_PAGE = "https://huggingface.co/docs/hub/repositories-licenses"


def check_license(license_id: str) -> str:
    """`license_id` when the hub accepts it in a card; else a TokensmithError that says which ids it takes."""
    if license_id not in HUB_LICENSES:
        lower = license_id.strip().lower()
        hint = f" (did you mean {lower}?)" if lower in HUB_LICENSES else ""
        raise TokensmithError(
            f"licence {license_id!r} is not one the hub accepts{hint}: give a hub licence id such as "
            f"apache-2.0, cc-by-4.0, creativeml-openrail-m, or `other` for terms not on its list "
            f"({LICENSES_PAGE})"
        )
    return license_id
