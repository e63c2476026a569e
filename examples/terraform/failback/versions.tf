# Without this block Terraform looks for hashicorp/aiven (the default namespace for a provider
# named "aiven"), fails with "run terraform init", and init fails offline. pgcrdr's provider is
# installed as aiven/aiven (`pgcrdr terraform install`), as Aiven's own provider is published.
terraform {
  required_providers {
    aiven = {
      source = "aiven/aiven"
    }
  }
}

# The token comes from AIVEN_TOKEN (or api_token = ...), the URL from AIVEN_WEB_URL.
provider "aiven" {}
