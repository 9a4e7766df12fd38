"""cdk-nag finding ids for resources, rendered the way cdk-nag renders them.

cdk-nag names an IAM5 finding after the policy's resource with intrinsics replaced by ``<AWS::Region>``,
``<Logical.Arn>``... A hand-written id only matches one shape of synth: with ``CDK_DEFAULT_REGION`` /
``CDK_DEFAULT_ACCOUNT`` set, region and account are literal strings in the template and the finding id
changes. Rendering the id from the same value the policy uses holds in every environment.
"""

from __future__ import annotations

from typing import Any

import aws_cdk as cdk


def _render(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, dict):
        if "Ref" in value:
            return f"<{value['Ref']}>"
        if "Fn::GetAtt" in value:
            logical, attribute = value["Fn::GetAtt"]
            return f"<{logical}.{attribute}>"
        if "Fn::Join" in value:
            separator, parts = value["Fn::Join"]
            return separator.join(_render(part) for part in parts)
    raise ValueError(f"cannot render {value!r} as a cdk-nag resource id")


def iam5_resource(scope: cdk.Stack, resource: str) -> str:
    """The ``AwsSolutions-IAM5[Resource::...]`` id of a wildcard resource as cdk-nag reports it here."""
    return f"AwsSolutions-IAM5[Resource::{_render(scope.resolve(resource))}]"
