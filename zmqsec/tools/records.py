"""APEL individual job messages (v0.3) as an APEL client spools them: what the demo streams."""

from __future__ import annotations

import random
import re

JOB_ID = re.compile(r"^LocalJobId: (\S+)$", re.M)
SITES = ("RAL-LCG2", "UKI-NORTHGRID-MAN-HEP", "CERN-PROD", "INFN-T1", "FZK-LCG2")
VOS = ("atlas", "cms", "lhcb", "alice", "dteam")


def job_record(index: int, rng: random.Random, now: int) -> bytes:
    """One APEL individual job message (v0.3) holding one job, as an APEL client would spool it."""
    site, vo = rng.choice(SITES), rng.choice(VOS)
    host = f"ce{rng.randint(1, 4):02d}.{site.lower()}.example.org"
    wall, processors = rng.randint(300, 86_400), rng.choice((1, 1, 1, 8))
    end = now - rng.randint(0, 3600)
    return (
        "APEL-individual-job-message: v0.3\n"
        f"Site: {site}\nSubmitHost: {host}:8443/cream-pbs-{vo}\nMachineName: {host}\nQueue: {vo}\n"
        f"LocalJobId: {index:07d}.{host.split('.')[0]}\nLocalUserId: {vo}{rng.randint(1, 40):03d}\n"
        f"GlobalUserName: /C=UK/O=eScience/OU=Demo/L=Lab/CN=user {rng.randint(1, 500)}\n"
        f"FQAN: /{vo}/Role=production/Capability=NULL\nVO: {vo}\nVOGroup: /{vo}\nVORole: Role=production\n"
        f"WallDuration: {wall}\nCpuDuration: {int(wall * processors * rng.uniform(0.4, 0.98))}\n"
        f"Processors: {processors}\nNodeCount: 1\nStartTime: {end - wall}\nEndTime: {end}\n"
        "InfrastructureDescription: APEL-CREAM-PBS\nInfrastructureType: grid\n"
        f"MemoryReal: {rng.randint(500_000, 4_000_000)}\nMemoryVirtual: {rng.randint(1_000_000, 8_000_000)}\n"
        f"ServiceLevelType: HEPSPEC\nServiceLevel: {rng.choice(('8.9', '10.0', '12.4'))}\n%%\n"
    ).encode()


def job_ids(bodies) -> set[str]:
    """The ``LocalJobId`` of every job in the given message bodies (text)."""
    return {m.group(1) for body in bodies for m in JOB_ID.finditer(body)}
